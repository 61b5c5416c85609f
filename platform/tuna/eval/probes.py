"""Alignment diagnostics (the survey's and FINER's measurements) on the FINER ID and OOD images.

Three measurements, written to ``<data_dir>/eval/probes.json`` by :func:`run_probes`:

- **linear probe** for the fine label on each feature type, trained on a seeded, class-stratified half
  of a split's images and scored on the other half (``REPEATS`` halvings, mean reported, std kept):
  ``clip`` the vision tower's patch features the connector reads (``vision_feature_layer``, CLS
  dropped), mean-pooled; ``clip_embed`` CLIP's own image embedding; ``connector`` the TUNA model's
  projector output of the patches, mean-pooled; ``baseline_connector`` the same for the LLaVA
  baseline; ``tags`` the tag block TUNA inserts (tuner-weighted visual-tag and word embeddings of the
  tags retrieved from datastore A), mean-pooled; ``tuna`` the mean of everything TUNA inserts in place
  of ``<image>`` (visual tokens and tag block, as the LM reads them); ``*_grid`` the same token sets
  average-pooled to at most GRID x GRID regions and flattened (``tuna_grid`` = connector grid + tag block),
  a check that mean-pooling is not what hides the patches' information. ``loss_recovered`` =
  (tuna - connector) / (reference - connector), the share of the probe accuracy lost between CLIP and the
  connector that the tags win back; the headline reference is CLIP's image embedding (``clip_embed``),
  ``loss_recovered_detail`` also gives it against the connector's own input (``clip``, ``clip_grid``).
- **mutual kNN** alignment (Huh et al. 2024, "platonic representation"): for paired image and text
  features, the mean overlap of the k=10 nearest-neighbour sets (self excluded); texts are one caption
  per image built from its record (``"a large pink wavy zedul"``). CLIP image vs CLIP text; and CLIP
  patches, connector, TUNA features vs the LM's mean-pooled last hidden states of the caption.
- **knowledge probe**: fine label from the record's text-only ``attributes`` (CLIP text feature ->
  nearest ``"a photo of a {name}."`` prompt; and each LM scoring the attribute sentence after every
  class name, the corpus's own phrasing) vs from the image alone (CLIP zero-shot); candidates are all
  class names of domain A.

Nothing is trained on evaluation halves used for scoring; the knowledge probe and mutual kNN train nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuna.errors import CorruptSample, TunaError
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.sources import file_digest, sources

PROBES_VERSION = "tuna.probes/1"
SPLITS = ("id", "ood")
K_NEIGHBOURS = 10
REPEATS = 5                         # seeded train/test halvings per split; accuracies are their mean
C_GRID = (0.01, 0.1, 1.0, 10.0)     # inverse L2 strengths; one is chosen per fit by 3-fold CV on the TRAIN half
PROMPT = "a photo of a {name}."     # CLIP zero-shot prompt (as tuna.foundation.clip)
GRID = 8                           # spatial probes: the patch grid average-pooled to at most GRID x GRID, flattened
# "Before the connector" has three readings; each gives its (clip, connector, baseline, tuna) features.
# The headline uses CLIP's image embedding (the survey's "CLIP features"); the connector's own input, the
# patch features (mean-pooled, or as a grid), is the stricter reading.
REFERENCES = {"clip_embed": ("clip_embed", "connector", "baseline_connector", "tuna"),
              "clip": ("clip", "connector", "baseline_connector", "tuna"),
              "clip_grid": ("clip_grid", "connector_grid", "baseline_connector_grid", "tuna_grid")}
HEADLINE_REFERENCE = "clip_embed"
FEATURES = ("clip", "clip_embed", "connector", "baseline_connector", "tags", "tuna",
            "clip_grid", "connector_grid", "baseline_connector_grid", "tuna_grid")


class ProbeError(TunaError):
    """The probes cannot run as asked (a model or an eval split is missing)."""


# ----------------------------------------------------------------------------------------- pure functions


def split_halves(labels: Sequence[Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class-stratified halving: per class, a shuffled ceil(n/2) to train and the rest to test.

    A class seen once goes to train only (nothing to score it against). Returns sorted index arrays.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, test = [], []
    for cls in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        cut = (len(idx) + 1) // 2
        train += idx[:cut].tolist()
        test += idx[cut:].tolist()
    return np.array(sorted(train), dtype=int), np.array(sorted(test), dtype=int)


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def _fit_predict_torch(x: np.ndarray, y: np.ndarray, test: np.ndarray, c: float) -> np.ndarray:
    """Multinomial logistic regression, L2 penalty 1/(2C) on the weights (sklearn's objective), full-batch LBFGS."""
    classes, yi = np.unique(y, return_inverse=True)
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(yi, dtype=torch.long)
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt, reduction="sum") + 0.5 / c * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return classes[(torch.as_tensor(test, dtype=torch.float64) @ w + b).argmax(1).numpy()]


def _fit_predict(x: np.ndarray, y: np.ndarray, test: np.ndarray, c: float, backend: str) -> np.ndarray:
    if len(set(y.tolist())) == 1:
        return np.full(len(test), y[0])
    if x.shape[1] > x.shape[0]:
        # More dimensions than samples: the L2-penalised optimum lies in the span of the training rows
        # (representer theorem), so fitting in that span's orthonormal basis gives the same predictions, cheaper.
        _, _, vt = np.linalg.svd(x, full_matrices=False)                           # (n, d)
        x, test = x @ vt.T, test @ vt.T
    if backend == "sklearn":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=3000).fit(x, y).predict(test)
    return _fit_predict_torch(x, y, test, c)


def _backend() -> str:
    try:
        import sklearn  # noqa: F401  (installed with mlflow; the torch fit is the fallback)
    except ImportError:
        return "torch"
    return "sklearn"


def _choose_c(x: np.ndarray, y: np.ndarray, seed: int, backend: str) -> float:
    """The C of ``C_GRID`` with the best 3-fold accuracy on the training half (ties: the stronger penalty)."""
    if len(y) < 6:
        return 1.0
    folds = np.random.default_rng(seed).permutation(len(y)) % 3
    best, best_acc = C_GRID[0], -1.0
    for c in C_GRID:
        hits = 0
        for f in range(3):
            tr, va = folds != f, folds == f
            a, v = _standardize(x[tr], x[va])
            hits += int((_fit_predict(a, y[tr], v, c, backend) == y[va]).sum())
        if hits / len(y) > best_acc + 1e-12:
            best, best_acc = c, hits / len(y)
    return best


def linear_probe(features: np.ndarray, labels: Sequence[Any], train_idx: np.ndarray, test_idx: np.ndarray,
                 seed: int = 0, c: float | None = None, backend: str | None = None) -> float:
    """Test accuracy of a multinomial logistic-regression probe fitted on ``train_idx`` only.

    Features are standardised with the training half's statistics; ``c`` (inverse L2 strength) is chosen
    by 3-fold CV inside the training half when None. Test labels unseen in training count as errors.
    """
    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if len(test_idx) == 0:
        raise ValueError("linear_probe needs at least one test sample")
    backend = backend or _backend()
    xtr, ytr = x[train_idx], y[train_idx]
    c = _choose_c(xtr, ytr, seed, backend) if c is None else c
    a, t = _standardize(xtr, x[test_idx])
    return float(np.mean(_fit_predict(a, ytr, t, c, backend) == y[test_idx]))


def _neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's k nearest rows by cosine (self excluded; ties broken by index)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def mutual_knn(a: np.ndarray, b: np.ndarray, k: int = K_NEIGHBOURS) -> float:
    """Mutual-kNN alignment of paired features (row i of ``a`` and of ``b`` describe the same sample):
    mean over samples of |kNN_a(i) & kNN_b(i)| / k, cosine neighbours, self excluded (Huh et al. 2024).

    1.0 when both spaces rank neighbours alike; about k / (N - 1) for unrelated features.
    """
    if len(a) != len(b):
        raise ValueError(f"mutual_knn needs paired rows; got {len(a)} and {len(b)}")
    k = min(k, len(a) - 1)
    if k < 1:
        raise ValueError("mutual_knn needs at least 2 samples")
    na, nb = _neighbours(a, k), _neighbours(b, k)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(na.tolist(), nb.tolist())]))


def nearest_label(queries: np.ndarray, keys: np.ndarray, names: Sequence[str]) -> list[str]:
    """The name of each query's most cosine-similar key (row j of ``keys`` belongs to ``names[j]``)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    k = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    return [names[j] for j in np.argmax(q @ k.T, axis=1)]


def recovered(clip: float | None, connector: float | None, tuna: float | None) -> float | None:
    """(tuna - connector) / (clip - connector): the share of the connector's probe loss TUNA wins back
    (None when there is no loss to recover, i.e. the connector is not below CLIP)."""
    if clip is None or connector is None or tuna is None or clip - connector <= 0:
        return None
    return round((tuna - connector) / (clip - connector), 4)


# ----------------------------------------------------------------------------------------- texts


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption(record: dict[str, Any]) -> str:
    """One caption per FINER image from its record, in the web captions' phrasing: "a large pink wavy zedul"."""
    inst = record.get("instance-attributes") or {}
    pattern = inst.get("pattern")
    words = [w for w in (inst.get("size"), inst.get("colour"), None if pattern == "plain" else pattern) if w]
    words.append(record["fine-level-lbl"])
    return f"{_article(words[0])} {' '.join(words)}"


def attribute_text(attributes: Sequence[str]) -> str:
    """The text-only description CLIP's text tower reads: "a photo of an object with an arrow shape, ..."."""
    return "a photo of an object with " + ", ".join(attributes) + "."


def attribute_sentence(name: str, attributes: Sequence[str]) -> tuple[str, str]:
    """(prefix, full sentence) the LM scores: the text corpus's phrasing
    "A zedul has an arrow shape with a wavy pattern and no mark; its accents are orange." when the attributes
    have the world's four parts, else "A zedul has <attributes joined>."; the score is of the part after the prefix."""
    prefix = f"{_article(name).capitalize()} {name}"
    a = list(attributes)
    if len(a) == 4 and a[0].endswith(" shape") and a[1].endswith(" pattern") and a[3].endswith(" accents"):
        body = (f" has {_article(a[0])} {a[0]} with {_article(a[1])} {a[1]} and {a[2]}; "
                f"its accents are {a[3][:-len(' accents')]}.")
    else:
        body = " has " + ", ".join(a) + "."
    return prefix, prefix + body


# ----------------------------------------------------------------------------------------- models


@dataclass
class SplitData:
    records: list[dict[str, Any]]
    images: list[Any]            # PIL images, one per record
    paths: list[Path]
    labels: list[str]
    skipped: int


def load_split(folder: Path) -> SplitData:
    """A FINER split's readable images and records (images that do not decode are counted and skipped)."""
    from tuna.formats import load_finer
    from tuna.samples import decode_image

    records, images, paths, skipped = [], [], [], 0
    for r in load_finer(folder / "finer.jsonl"):
        path = folder / "images" / r["image"]
        try:
            images.append(decode_image(path.read_bytes() if path.is_file() else None, str(path)))
        except CorruptSample:
            skipped += 1
            continue
        records.append(r)
        paths.append(path)
    return SplitData(records, images, paths, [r["fine-level-lbl"] for r in records], skipped)


class _Model:
    """A trained model folder, loaded for feature extraction (the Predictor's loading; no generation)."""

    def __init__(self, folder: Path, system: str, threads: int) -> None:
        from tuna.inference import Predictor

        p = Predictor(folder, system, threads=threads, device="cpu")  # the probes feed CPU tensors to the model's parts
        self.model, self.tokenizer, self.processor = p.model, p.tokenizer, p.processor
        self.clip_tokenizer = p.processor.clip_tokenizer
        self.uses_tags = p.uses_tags
        self.num_tags = p.num_tags

    @torch.inference_mode()
    def image_features(self, images: Sequence[Any], tags: Sequence[Sequence[str]] | None,
                       batch_size: int) -> dict[str, np.ndarray]:
        """Per image: clip (patch mean), clip_embed, connector (mean) and, with tags, tags / tuna (see module doc)."""
        m = self.model
        out: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), batch_size):
            pv = self.processor.pixel_values(images[i:i + batch_size])
            patches, image_feat = m.encode_image(pv)                                # (B, P, Dv), (B, Dt)
            visual = m.projector(patches)                                           # (B, P, D)
            feats = {"clip": patches.mean(1), "clip_embed": F.normalize(image_feat.float(), dim=-1),
                     "connector": visual.mean(1)}
            grids = {"clip_grid": _grid(patches), "connector_grid": _grid(visual)}
            feats.update({k: v for k, v in grids.items() if v is not None})
            if self.uses_tags and tags is not None:
                t = self.processor.tag_tensors([list(x)[: self.num_tags] for x in tags[i:i + batch_size]])
                block, block_mask, _, _ = m.encode_tags(
                    patches, image_feat, t["tag_input_ids"], t["tag_attention_mask"], t["tag_mask"],
                    t["tag_clip_input_ids"], t["tag_clip_attention_mask"])         # (B, k(1+T), D), (B, k(1+T))
                bm = block_mask[..., None].to(block.dtype)
                n_block = bm.sum(1)                                                 # (B, 1)
                feats["tags"] = (block * bm).sum(1) / n_block.clamp(min=1.0)
                feats["tuna"] = (visual.sum(1) + (block * bm).sum(1)) / (visual.shape[1] + n_block)
                if "connector_grid" in feats:
                    feats["tuna_grid"] = torch.cat([feats["connector_grid"], feats["tags"]], dim=1)
            for k, v in feats.items():
                out.setdefault(k, []).append(v.float().numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    @torch.inference_mode()
    def clip_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        clip = self.model.clip
        limit = clip.config.text_config.max_position_embeddings
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.clip_tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=limit,
                                      return_tensors="pt")
            pooled = clip.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
            out.append(F.normalize(clip.text_projection(pooled).float(), dim=-1).numpy())
        return np.concatenate(out)

    def lm_text(self, texts: Sequence[str]) -> np.ndarray:
        return lm_text_features(self.model.language_model, self.tokenizer, texts)


def _grid(tokens: torch.Tensor) -> torch.Tensor | None:
    """(B, P, D) visual tokens on a square grid -> (B, g*g*D) the grid average-pooled to g = min(side, GRID),
    flattened (None when P is not a square, e.g. with the CLS token kept)."""
    b, p, d = tokens.shape
    side = round(p ** 0.5)
    if side * side != p:
        return None
    grid = tokens.float().transpose(1, 2).reshape(b, d, side, side)
    return F.adaptive_avg_pool2d(grid, min(side, GRID)).flatten(1)


def _pad(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


@torch.inference_mode()
def lm_text_features(lm: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """(N, D) the LM's last hidden states mean-pooled over each text's tokens (right padding, masked)."""
    out = []
    for i in range(0, len(texts), batch_size):
        rows = tokenizer(list(texts[i:i + batch_size]), add_special_tokens=True)["input_ids"]
        ids, mask = _pad(rows, _pad_id(tokenizer))
        h = lm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()
        m = mask[..., None].float()
        out.append(((h * m).sum(1) / m.sum(1)).numpy())
    return np.concatenate(out)


@torch.inference_mode()
def lm_name_scores(lm: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 256) -> np.ndarray:
    """Summed log-probability of each full sentence's tokens after its prefix ((prefix, full) pairs)."""
    scores = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        fulls = tokenizer([f for _, f in chunk], add_special_tokens=True)["input_ids"]
        prefixes = tokenizer([p for p, _ in chunk], add_special_tokens=True)["input_ids"]
        starts = [len(p) if f[:len(p)] == p else 1 for p, f in zip(prefixes, fulls)]
        ids, mask = _pad(fulls, _pad_id(tokenizer))
        logp = torch.log_softmax(lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        tok = logp.gather(-1, ids[:, 1:, None])[..., 0]                              # (B, L-1): log p(token t+1)
        pos = torch.arange(1, ids.shape[1])[None]
        keep = (pos >= torch.tensor(starts)[:, None]) & (mask[:, 1:] == 1)
        scores.append((tok * keep).sum(1).numpy())
    return np.concatenate(scores)


def lm_knowledge(lm: Any, tokenizer: Any, attributes: Sequence[Sequence[str]], names: Sequence[str]) -> list[str]:
    """For each attribute list, the class name under which the LM finds the attribute sentence likeliest."""
    unique = sorted({tuple(a) for a in attributes})
    pairs = [attribute_sentence(n, a) for a in unique for n in names]
    scores = lm_name_scores(lm, tokenizer, pairs).reshape(len(unique), len(names))
    best = {a: names[int(j)] for a, j in zip(unique, scores.argmax(1))}
    return [best[tuple(a)] for a in attributes]


# ----------------------------------------------------------------------------------------- the run


def fingerprint(cfg: Recipe) -> str:
    """What the probes depend on: this code's constants, both trained models, the world, the model's datastore and the seed."""

    payload = {"version": PROBES_VERSION, "k": K_NEIGHBOURS, "repeats": REPEATS, "c_grid": list(C_GRID),
               "grid": GRID, "seed": cfg.run.seed, "num_tags": cfg.model.num_tags,
               "models": {v: file_digest(layout(cfg).stage(v, 2) / "metrics.json") for v in ("tuna", "baseline")},
               "world": sources(cfg).digest("finer_id", "finer_ood", "taxonomy"),
               "datastore": file_digest(layout(cfg).datastore(cfg.model.datastore) / "manifest.json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_up_to_date(cfg: Recipe) -> bool:
    try:
        return json.loads(layout(cfg).probes.read_text())["fingerprint"] == fingerprint(cfg)
    except (OSError, ValueError, KeyError):
        return False


def _mean_std(values: list[float]) -> tuple[float, float]:
    return round(float(np.mean(values)), 4), round(float(np.std(values)), 4)


def _threadpool_one() -> Any:
    """Limit BLAS/OpenMP threads to 1 while probes fit (cores are shared); a no-op without threadpoolctl."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def run_probes(cfg: Recipe, progress: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every probe on the FINER ID and OOD images; writes ``<data_dir>/eval/probes.json`` and returns it."""
    from tuna.eval.evaluate import retrieved_tags

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.eval.threads)
    folders = {v: layout(cfg).model(v, 2) for v in ("tuna", "baseline")}
    if not (folders["tuna"] / "config.json").is_file():
        raise ProbeError(f"no trained TUNA model at {folders['tuna']}; run `tuna train --variant tuna` first")
    tuna = _Model(folders["tuna"], cfg.train.system_prompt, cfg.eval.threads)
    if not tuna.uses_tags:
        raise ProbeError(f"{folders['tuna']} was trained without tags (tag_mode none); the TUNA features need tags")
    baseline = (_Model(folders["baseline"], cfg.train.system_prompt, cfg.eval.threads)
                if (folders["baseline"] / "config.json").is_file() else None)
    if baseline is None:
        log(f"probes: no baseline model at {folders['baseline']}; the baseline features are left out")
    pretrained = _pretrained_lm(cfg)

    taxonomy = json.loads(sources(cfg)["taxonomy"].path.read_text(encoding="utf-8"))
    names = [c["name"] for c in taxonomy["A"]["classes"]]
    backend = _backend()
    bs = cfg.eval.batch_size
    result: dict[str, Any] = {
        "version": PROBES_VERSION, "fingerprint": fingerprint(cfg), "models": {k: str(v) for k, v in folders.items()},
        "settings": {"k": K_NEIGHBOURS, "repeats": REPEATS, "c_grid": list(C_GRID), "grid": GRID, "backend": backend,
                     "seed": cfg.run.seed, "tags_from": "A", "candidates": len(names)},
        "linear_probe": {}, "linear_probe_std": {}, "mutual_knn": {}, "knowledge_probe": {}, "n": {},
        "loss_recovered_reference": HEADLINE_REFERENCE, "loss_recovered_detail": {}, "claims": {},
    }
    for split in SPLITS:
        data = load_split(sources(cfg).eval_set("finer", split).path)
        if len(data.records) < 4:
            raise ProbeError(f"FINER {split} has {len(data.records)} readable images; the probes need at least 4")
        retrieved = retrieved_tags(cfg, tuna.model.config.tag_mode, data.paths, f"finer-{split}", cfg.model.datastore)
        tags = [[t for t, _ in retrieved.get(str(p), [])] for p in data.paths]
        feats = tuna.image_features(data.images, tags, bs)
        if baseline is not None:
            base = baseline.image_features(data.images, None, bs)
            feats["baseline_connector"] = base["connector"]
            if "connector_grid" in base:
                feats["baseline_connector_grid"] = base["connector_grid"]

        # Linear probes: REPEATS seeded halvings; the same halves for every feature type.
        accs: dict[str, list[float]] = {f: [] for f in FEATURES if f in feats}
        with _threadpool_one():
            for r in range(REPEATS):
                seed = cfg.run.seed * 1000 + r
                train, test = split_halves(data.labels, seed)
                for f, acc in accs.items():
                    acc.append(linear_probe(feats[f], data.labels, train, test, seed=seed, backend=backend))
        # Only the features computed (no baseline model, or a non-square patch grid, leaves some out).
        result["linear_probe"][split], result["linear_probe_std"][split] = {}, {}
        for f, v in accs.items():
            result["linear_probe"][split][f], result["linear_probe_std"][split][f] = _mean_std(v)
        result["n"][split] = {"images": len(data.records), "skipped": data.skipped, "train": len(train),
                              "test": len(test), "classes": len(set(data.labels))}

        # Mutual kNN between paired image and text features (one caption per image).
        captions = [caption(r) for r in data.records]
        lm_caps = tuna.lm_text(captions)
        mk = {"clip": mutual_knn(feats["clip_embed"], tuna.clip_text(captions)),
              "clip_vs_lm": mutual_knn(feats["clip"], lm_caps),
              "connector": mutual_knn(feats["connector"], lm_caps),
              "tuna": mutual_knn(feats["tuna"], lm_caps)}
        if baseline is not None:
            mk["baseline_connector"] = mutual_knn(feats["baseline_connector"], baseline.lm_text(captions))
        result["mutual_knn"][split] = {k: round(v, 4) for k, v in mk.items()}
        result["mutual_knn"][split]["chance"] = round(min(K_NEIGHBOURS, len(captions) - 1) / (len(captions) - 1), 4)

        # Knowledge probe: the label from text-only attributes vs from the image alone.
        gold = np.array(data.labels)
        prompts = tuna.clip_text([PROMPT.format(name=n) for n in names])
        attrs = [list(r.get("attributes") or []) for r in data.records]
        kp = {"image_clip": nearest_label(feats["clip_embed"], prompts, names),
              "text_clip": nearest_label(tuna.clip_text([attribute_text(a) for a in attrs]), prompts, names),
              "text_lm": lm_knowledge(tuna.model.language_model, tuna.tokenizer, attrs, names)}
        if baseline is not None:
            kp["text_lm_baseline"] = lm_knowledge(baseline.model.language_model, baseline.tokenizer, attrs, names)
        if pretrained is not None:
            kp["text_lm_pretrained"] = lm_knowledge(pretrained[0], pretrained[1], attrs, names)
        result["knowledge_probe"][split] = {k: round(float(np.mean(np.array(v) == gold)), 4) for k, v in kp.items()}
        result["knowledge_probe"][split]["chance"] = round(1 / len(names), 4)
        log(f"probes {split}: " + ", ".join(f"{f} {v:.3f}" for f, v in result["linear_probe"][split].items()))

    lp = {s: {f: result["linear_probe"][s].get(f) for f in FEATURES} for s in SPLITS}
    for ref, (clip, conn, base, tuna_f) in REFERENCES.items():
        mean = {f: (None if any(lp[s][f] is None for s in SPLITS) else float(np.mean([lp[s][f] for s in SPLITS])))
                for f in (clip, conn, tuna_f)}
        rec = recovered(mean[clip], mean[conn], mean[tuna_f])
        result["loss_recovered_detail"][ref] = {
            "features": [clip, conn, tuna_f], "mean": rec,
            **{s: recovered(lp[s][clip], lp[s][conn], lp[s][tuna_f]) for s in SPLITS},
            "vs_baseline": {s: recovered(lp[s][clip], lp[s][base], lp[s][tuna_f]) for s in SPLITS}}
        result["claims"][ref] = {
            "connector_below_clip": {s: _below(lp[s][conn], lp[s][clip]) for s in SPLITS},
            "baseline_connector_below_clip": {s: _below(lp[s][base], lp[s][clip]) for s in SPLITS},
            "tuna_recovers_half": None if rec is None else bool(rec >= 0.5)}
    result["loss_recovered"] = result["loss_recovered_detail"][HEADLINE_REFERENCE]["mean"]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["summary"] = summary_line(result)
    from tuna.eval.evaluate import write_json

    write_json(layout(cfg).probes, result)
    return result


def _below(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else bool(a < b)


def _pretrained_lm(cfg: Recipe) -> tuple[Any, Any] | None:
    """The LM before stage 2 (``<data_dir>/lm`` or model.language_model), when loadable; None otherwise."""
    from tuna.foundation.lm import lm_path

    try:
        from tuna.foundation.lm.language_model import load_lm

        return load_lm(lm_path(cfg))
    except (TunaError, OSError, ValueError):
        return None


def summary_line(result: dict[str, Any]) -> str:
    """One line: probe accuracies (CLIP > connector? TUNA) per split, loss recovered, knowledge probe."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    parts = []
    for s in SPLITS:
        lp = result["linear_probe"].get(s)
        if lp:
            kp = result["knowledge_probe"].get(s, {})
            parts.append(f"{s.upper()} probe CLIP emb {pct(lp.get('clip_embed'))} / patches {pct(lp.get('clip'))} / "
                         f"connector {pct(lp.get('connector'))} / baseline {pct(lp.get('baseline_connector'))} / "
                         f"TUNA {pct(lp.get('tuna'))}; "
                         f"knowledge text {pct(kp.get('text_lm'))} vs image {pct(kp.get('image_clip'))}")
    rec = result.get("loss_recovered")
    ref = result.get("loss_recovered_reference", HEADLINE_REFERENCE)
    return ("probes: " + " | ".join(parts)
            + f" | loss recovered {'-' if rec is None else f'{rec:.2f}'} (reference {ref})")


__all__ = ["FEATURES", "ProbeError", "attribute_sentence", "attribute_text", "caption", "fingerprint", "is_up_to_date",
           "linear_probe", "lm_knowledge", "lm_name_scores", "lm_text_features", "load_split", "mutual_knn",
           "nearest_label", "recovered", "run_probes", "split_halves", "summary_line"]
