"""Where does existence (POPE) get lost? Two fast checks on a recipe's world, validation splits only (issue 13).

  zero-shot   the CLIP alone: "yes" iff the asked class is among the image's top-k classes by image-text cosine
              (prompts "a photo of a X."), on the POPE validation splits: how much existence the encoder's own
              embedding holds, with no training on top. ``--crops N`` also says "yes" when the class is the top-1
              of one of the N x N overlapping crops ``model.vision_crops`` feeds the connector; then also
              ``capacity`` (one threshold on the asked class's best-view probability, whole image or a crop,
              at the CLIP's own temperature: the best accuracy a reader of these views can reach with one
              rule; the threshold is chosen on the same validation questions, so it is an upper bound) and
              ``recall_by_size`` (objects whose class is some view's top-1, per size attribute).
  tags        the retrieved tags alone: "yes" iff a tag of the image names the asked class (whole words), on the
              POPE validation splits: how much existence a model that reads only its tags can reach (multi-object
              scenes retrieve neighbours of their dominant object, so the other objects go unnamed).
  train       stage 1 + stage 2 of a variant (baseline, tuna, ...) in ONE process on cached CLIP features (the vision tower is frozen in
              both stages, so each image is encoded once; ~10x faster than `tuna train` on 2 cores), then POPE
              validation accuracy read from the Yes/No logits at the answer position (no generation), and FINER
              validation naming (the short-answer which-kind question; a hit when the first answer token is
              the gold name's), every 400 stage-2 steps (``--every``) and at the end. ``--oracle`` replaces the visual tokens by the LM's own word embeddings
              of the objects' names (from instances.json): what the LM + stage 2 reach with perfect vision.
  probe       what the connector's input holds, without the LM: a small MLP read of each visual token (the recipe's
              tokens: model.vision_feature_layer / _pool / vision_crops), max over the tokens per class, trained with
              multi-label BCE on the instruction images' objects (instances.json; 30 epochs, seed 0) and asked the
              POPE validation ID questions (yes iff the asked class scores above 0.5): the existence a per-token
              reader of these features reaches; ``--linear`` reads each token with one linear layer instead.

Usage (after `tuna world`, `tuna encoder` and `tuna lm` of the recipe):
  .venv/bin/python bench/diagnose_existence.py zero-shot --config configs/mini.yaml [--encoder DIR] [--crops 3]
  .venv/bin/python bench/diagnose_existence.py tags --config configs/mini.yaml     (after `tuna index`)
  .venv/bin/python bench/diagnose_existence.py train OUT --config configs/mini.yaml [--oracle] [--skip-stage1] \\
      [key=value overrides, e.g. model.language_model=/path/lm train.stage2.lm_lr_scale=0.2]
  .venv/bin/python bench/diagnose_existence.py probe --config configs/mini.yaml [--linear] [model.vision_crops=4]
Prints one JSON line of accuracies (and yes-ratios) per split and negative kind; train also writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from tuna.recipe import load_recipe

KINDS = ("random", "popular", "adversarial")


def pope_rows(world: Path, split: str) -> list[dict[str, Any]]:
    """The POPE validation questions of ``split`` (id | ood), each with its kind and image path."""
    folder = world / "val" / "pope" / split
    rows = []
    for kind in KINDS:
        for line in (folder / f"world_pope_{kind}.json").read_text().splitlines():
            if line.strip():
                rows.append(dict(json.loads(line), kind=kind, path=folder / "images" / json.loads(line)["image"]))
    return rows


def asked_name(text: str) -> str:
    return text.split("Is there ", 1)[1].split(" ", 1)[1].split(" in the image")[0]


def score(rows: Sequence[dict[str, Any]], says_yes: Sequence[bool], split: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind in KINDS:
        pairs = [(y, r["label"] == "yes") for r, y in zip(rows, says_yes) if r["kind"] == kind]
        out[f"{split}_{kind}"] = round(sum(y == t for y, t in pairs) / len(pairs), 3)
        out[f"{split}_{kind}_yes"] = round(sum(y for y, _ in pairs) / len(pairs), 3)
    out[split] = round(sum(out[f"{split}_{k}"] for k in KINDS) / len(KINDS), 3)
    return out


# ------------------------------------------------------------------------------------------------ zero-shot


@torch.no_grad()
def zero_shot(cfg: Any, encoder: Path, ks: Sequence[int] = (2, 3, 4), crops: int = 0) -> dict[str, Any]:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from tuna.model.vision_features import crop_grid

    world = Path(cfg.run.data_dir) / "world"
    model = CLIPModel.from_pretrained(str(encoder)).eval()
    proc, tok = AutoImageProcessor.from_pretrained(str(encoder)), AutoTokenizer.from_pretrained(str(encoder))
    names = [c["name"] for c in json.loads((world / "taxonomy.json").read_text())["A"]["classes"]]
    t = tok([f"a photo of a {n}." for n in names], padding=True, return_tensors="pt")
    text = torch.nn.functional.normalize(model.text_projection(model.text_model(**t).pooler_output), dim=-1)
    out: dict[str, Any] = {}
    for split in ("id", "ood"):
        rows = pope_rows(world, split)
        paths = sorted({r["path"] for r in rows})
        def embed(pixels: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)

        embs, crop_top, view_probs, tops = [], [], [], []
        for i in range(0, len(paths), 256):
            pv = proc(images=[Image.open(p).convert("RGB") for p in paths[i:i + 256]], return_tensors="pt")["pixel_values"]
            embs.append(embed(pv))
            if crops:
                whole = embs[-1] @ text.T
                crop_sims = (embed(crop_grid(pv, crops)) @ text.T).reshape(len(pv), crops * crops, -1)
                crop_top += crop_sims.argmax(2).tolist()
                views = torch.cat([whole[:, None], crop_sims], dim=1)  # (images, 1 + crops^2, classes)
                view_probs.append((views * model.logit_scale.exp()).softmax(-1))
                tops += views.argmax(2).tolist()
        sims, at = torch.cat(embs) @ text.T, {p: i for i, p in enumerate(paths)}
        if crops:
            probs = torch.cat(view_probs, dim=1).max(dim=1).values  # (images, classes): best view per class
            asked = torch.tensor([probs[at[r["path"]], names.index(asked_name(r["text"]))].item() for r in rows])
            out.setdefault("capacity", {}).update(best_threshold(asked, [r["label"] == "yes" for r in rows], split))
            out.setdefault("recall_by_size", {}).update(recall_by_size(world, split, names, tops, paths))
        for k in ks:
            top = sims.topk(k, dim=1).indices.tolist()
            says = [names.index(asked_name(r["text"])) in top[at[r["path"]]] for r in rows]
            out[f"top{k}"] = {**out.get(f"top{k}", {}), **score(rows, says, split)}
            if crops:
                says = [y or names.index(asked_name(r["text"])) in crop_top[at[r["path"]]] for y, r in zip(says, rows)]
                out[f"top{k}+crops"] = {**out.get(f"top{k}+crops", {}), **score(rows, says, split)}
    return out


def best_threshold(scores: torch.Tensor, truth: Sequence[bool], split: str) -> dict[str, float]:
    """Accuracy of "yes iff score >= t" at the best t, and that t: what the features hold for existence
    when one threshold on the best view's probability decides (validation questions only)."""
    y = torch.tensor(truth)
    best = max((((scores >= t) == y).float().mean().item(), t.item()) for t in scores.unique())
    return {split: round(best[0], 3), f"{split}_threshold": round(best[1], 4)}


def recall_by_size(world: Path, split: str, names: Sequence[str], tops: Sequence[Sequence[int]],
                   paths: Sequence[Path]) -> dict[str, float]:
    """Share of the annotated objects whose class is the top-1 of some view (whole image or a crop), per
    size attribute (instances.json of the POPE validation split)."""
    inst = json.loads((world / "val" / "pope" / split / "instances.json").read_text(encoding="utf-8"))
    cat = {c["id"]: c["name"] for c in inst["categories"]}
    position = {p.name: i for i, p in enumerate(paths)}
    row = {i["id"]: position[i["file_name"]] for i in inst["images"]}
    hits: dict[str, list[int]] = {}
    for a in inst["annotations"]:
        hit = names.index(cat[a["category_id"]]) in tops[row[a["image_id"]]]
        for key in ("all", a["attributes"]["size"]):
            hits.setdefault(f"{split}_{key}", []).append(int(hit))
    return {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}


# ------------------------------------------------------------------------------------------------ tags alone


def tags_alone(cfg: Any) -> dict[str, Any]:
    from tuna.eval.finer import _contains, label_forms, normalize
    from tuna.layout import layout
    from tuna.retrieval.attach import attach_tags
    from tuna.samples import image_keys

    world, out = Path(cfg.run.data_dir) / "world", {}
    for split in ("id", "ood"):
        rows = pope_rows(world, split)
        paths = sorted({r["path"] for r in rows})
        tags = attach_tags(cfg, paths, layout(cfg).eval_cache(f"val-pope-{split}-tags-{cfg.model.datastore}"), "tags",
                           cfg.model.datastore, log=lambda s: None)
        keys = image_keys(paths)
        says = []
        for r in rows:
            named = [normalize(t).split() for t, _ in tags.get(keys[r["path"]], [])]
            says.append(any(_contains(t, form) for t in named for form in label_forms(asked_name(r["text"]))))
        out.update(score(rows, says, split))
    return out


# ------------------------------------------------------------------------------------------------ fast training


class FeatureCache:
    """CLIP outputs per image path, computed once; the collator passes (B, 1) cache indices as pixel_values."""

    def __init__(self, model: Any, collate: Any) -> None:
        self.model, self.collate, self.real = model, collate, model.encode_image
        self.index: dict[Path, int] = {}
        self.patches: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self, paths: Sequence[Path]) -> None:
        new = sorted({Path(p) for p in paths if Path(p) not in self.index})
        for i in range(0, len(new), 256):
            chunk = new[i:i + 256]
            patches, feats = self.real(self.collate.pixel_values([Image.open(p).convert("RGB") for p in chunk]))
            self._put(chunk, patches, feats)

    def _put(self, paths: Sequence[Path], patches: torch.Tensor, feats: torch.Tensor) -> None:
        for j, p in enumerate(paths):
            self.index[Path(p)] = len(self.index)
            self.patches.append(patches[j])
            self.features.append(feats[j])

    def ids(self, paths: Sequence[Path]) -> torch.Tensor:
        return torch.tensor([[float(self.index[Path(p)])] for p in paths])

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = pixel_values[:, 0].long().tolist()
        return torch.stack([self.patches[i] for i in idx]), torch.stack([self.features[i] for i in idx])


class OracleCache(FeatureCache):
    """Visual tokens = the LM's word embeddings of the image's object names (zeros past them); the projector is
    replaced by the identity, so the LM reads exactly its own name embeddings."""

    def __init__(self, model: Any, collate: Any, tokenizer: Any, world: Path, slots: int = 5) -> None:
        super().__init__(model, collate)
        self.tokenizer, self.slots = tokenizer, slots
        self.names: dict[Path, set[str]] = {}
        for inst in world.rglob("instances.json"):
            self.names.update(image_objects(inst.parent)[1])
        model.projector = torch.nn.Identity()

    @torch.no_grad()
    def add(self, paths: Sequence[Path]) -> None:
        table = self.model.get_input_embeddings().weight
        for p in sorted({Path(p) for p in paths if Path(p) not in self.index}):
            ids = [self.tokenizer.encode(" " + n, add_special_tokens=False)[0] for n in sorted(set(self.names.get(p, [])))]
            x = torch.zeros(self.slots, table.shape[1])
            x[:len(ids)] = table[ids[:self.slots]]
            self._put([p], x[None], torch.zeros(1, 1))


def _answer_id(tokenizer: Any, system: str, answer: str) -> int:
    from tuna.model.processing_tuna import tokenize_conversation
    from tuna.readers.llava import LlavaRecord

    rec = LlavaRecord("x", Path("x"), [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": answer}])
    return next(x for x in tokenize_conversation(rec, tokenizer, system)[1] if x != -100)


def _val_tags(cfg: Any, tag_mode: str, paths: Sequence[Path], name: str) -> dict[str, Any]:
    """Ranked tags per validation image path as `tuna eval --validation` retrieves them (the model's datastore),
    cached under ``name`` (e.g. val-pope-id)."""
    if tag_mode == "none":
        return {}
    from tuna.eval.evaluate import retrieved_tags

    return retrieved_tags(cfg, tag_mode, paths, name, cfg.model.datastore)


@torch.no_grad()
def _answer_logits(model: Any, cache: FeatureCache, tokenizer: Any, system: str, questions: Sequence[str],
                   paths: Sequence[Path], tags: dict[str, Any]) -> torch.Tensor:
    """(N, vocab) next-token logits at the answer position of each question asked about its image (with its tags)."""
    from tuna.model.processing_tuna import conversation_prompt_ids

    cache.add(paths)
    out = []
    for i in range(0, len(questions), 64):
        chunk = list(paths[i:i + 64])
        ids, mask = cache.collate.pad_left([conversation_prompt_ids(tokenizer, system, [], q) for q in questions[i:i + 64]])
        extra = (cache.collate.tag_tensors([[t for t, _ in tags.get(str(p), [])] for p in chunk])
                 if model.config.tag_mode != "none" else {})
        m = model.prepare_multimodal_inputs(ids, cache.ids(chunk), mask, None, **extra)
        out.append(model.language_model(inputs_embeds=m.inputs_embeds, attention_mask=m.attention_mask,
                                        position_ids=m.position_ids).logits[:, -1])
    return torch.cat(out)


@torch.no_grad()
def quick_pope(model: Any, cache: FeatureCache, tokenizer: Any, cfg: Any) -> dict[str, float]:
    """POPE validation accuracy: "yes" iff the Yes logit beats the No logit at the answer position."""
    from tuna.eval.evaluate import SHORT

    system = cfg.train.system_prompt
    yes_id, no_id = _answer_id(tokenizer, system, "Yes"), _answer_id(tokenizer, system, "No")
    world, out = Path(cfg.run.data_dir) / "world", {}
    model.eval()
    for split in ("id", "ood"):
        rows = pope_rows(world, split)
        paths = [r["path"] for r in rows]
        tags = _val_tags(cfg, model.config.tag_mode, paths, f"val-pope-{split}")
        logits = _answer_logits(model, cache, tokenizer, system, [r["text"] + SHORT for r in rows], paths, tags)
        out.update(score(rows, (logits[:, yes_id] > logits[:, no_id]).tolist(), split))
    model.train()
    return out


@torch.no_grad()
def quick_finer(model: Any, cache: FeatureCache, tokenizer: Any, cfg: Any) -> dict[str, float]:
    """FINER validation naming (ID, OOD): the which-kind question with the short-answer instruction; a hit when
    the answer's first token (greedy) is the gold fine name's first token (every mini class name is one token)."""
    from tuna.eval.evaluate import SHORT
    from tuna.eval.finer import _one, direct_prompt
    from tuna.formats import load_finer
    from tuna.sources import sources

    system, out = cfg.train.system_prompt, {}
    model.eval()
    for split in ("id", "ood"):
        src = sources(cfg).eval_set("finer", split, validation=True)
        records = load_finer(src.path)
        paths = [src.images / r["image"] for r in records]
        tags = _val_tags(cfg, model.config.tag_mode, paths, f"val-finer-{split}")
        questions = [direct_prompt(r["basic-level-lbl"]) + SHORT for r in records]
        first = _answer_logits(model, cache, tokenizer, system, questions, paths, tags).argmax(-1).tolist()
        gold = [_answer_id(tokenizer, system, _one(r["fine-level-lbl"], "fine-level")) for r in records]
        out[f"finer_{split}"] = round(sum(a == g for a, g in zip(first, gold)) / len(records), 3)
    model.train()
    return out


def train_stage(cfg: Any, stage: int, model: Any, cache: FeatureCache, examples: list[Any], params: list[Any],
                lm_params: list[Any], skip: bool, every: Callable[[int], None], interval: int = 400) -> dict[str, Any]:
    from tuna.train import engine

    sc = cfg.train.stage(stage)
    cache.add([ex.image for ex in examples])
    plan = engine.BatchPlan(len(examples), 1, sc.batch_size * cfg.train.ranks, sc.grad_accum, cfg.run.seed,
                            engine.example_lengths(examples, sc))
    total = 0 if skip else plan.total_steps(sc.epochs, sc.max_steps)
    groups = engine.StageInputs(model, None, params, examples, {}, None, lm_params).param_groups(sc.lr, sc.lm_lr_scale)
    opt = torch.optim.AdamW(groups, lr=sc.lr, weight_decay=sc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, engine.lr_lambda(total, sc.warmup))
    losses, t0 = [], time.perf_counter()
    model.train()
    for step in range(total):
        chunk = [examples[i] for i in plan.indices(step, 0, 0)]
        batch = cache.collate.collate([ex.input_ids for ex in chunk], [ex.labels for ex in chunk],
                                      cache.ids([ex.image for ex in chunk]), [ex.tags for ex in chunk])
        loss = model(**batch, loss_only=True).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.gradient_clipping)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 200 == 0 or step == total - 1:
            print(f"stage {stage} step {step + 1}/{total} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        if stage == 2 and step and step % interval == 0:
            every(step)
    return {"steps": total, "seconds": round(time.perf_counter() - t0), "last_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4)}


def fast_train(cfg: Any, out: Path, variant: str, oracle: bool, skip_stage1: bool, interval: int = 400) -> dict[str, Any]:
    from tuna.model import set_trainable
    from tuna.train import engine

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.run.seed)
    inp = engine.prepare_stage(cfg, variant, 1, 0, lambda: None, lambda s: None)
    model, tok = inp.model, inp.tokenizer
    cache = (OracleCache(model, inp.collate, tok, Path(cfg.run.data_dir) / "world") if oracle
             else FeatureCache(model, inp.collate))
    model.encode_image = cache.encode
    result: dict[str, Any] = {"variant": variant, "oracle": oracle, "seed": cfg.run.seed, "curve": []}

    def every(step: int) -> None:
        result["curve"].append({"step": step, **quick_pope(model, cache, tok, cfg), **quick_finer(model, cache, tok, cfg)})
        print("  pope", json.dumps(result["curve"][-1]), flush=True)

    result["stage1"] = train_stage(cfg, 1, model, cache, inp.examples, inp.params, inp.lm_params, skip_stage1 or oracle, every,
                                   interval)
    sc2 = cfg.train.stage(2)
    groups = set_trainable(model, 2, sc2.train_word_embeddings, False)
    if sc2.lm_lr_scale == 0 and "language_model" in groups:
        for p in groups.pop("language_model").values():
            p.requires_grad_(False)
    examples, _ = engine._examples(cfg, variant, 2, tok, 0, lambda: None, lambda s: None)
    result["stage2"] = train_stage(cfg, 2, model, cache, examples, [p for g in groups.values() for p in g.values()],
                                   list(groups.get("language_model", {}).values()), False, every, interval)
    result["pope_val"] = quick_pope(model, cache, tok, cfg)
    result["finer_val"] = quick_finer(model, cache, tok, cfg)
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


# ------------------------------------------------------------------------------------------------ probe


def image_objects(folder: Path) -> tuple[list[Path], dict[Path, set[str]]]:
    """Every image of a world folder (instances.json beside images/) and the class names of its objects."""
    d = json.loads((folder / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in d["categories"]}
    files = {i["id"]: folder / "images" / i["file_name"] for i in d["images"]}
    names: dict[Path, set[str]] = {}
    for a in d["annotations"]:
        names.setdefault(files[a["image_id"]], set()).add(cats[a["category_id"]])
    return sorted(files.values()), names


@torch.no_grad()
def visual_tokens(model: Any, processor: Any, paths: Sequence[Path]) -> torch.Tensor:
    """(N, P, Dv) the features the connector reads (the model's own encode_image: layer, pooling, crops)."""
    out = []
    for i in range(0, len(paths), 128):
        pixels = processor(images=[Image.open(p).convert("RGB") for p in paths[i:i + 128]], return_tensors="pt")
        out.append(model.encode_image(pixels["pixel_values"])[0].float())
    return torch.cat(out)


def token_probe(cfg: Any, linear: bool = False, max_train: int = 6000, epochs: int = 30) -> dict[str, Any]:
    """POPE validation ID accuracy of a per-token reader (max over tokens) trained on the instruction images."""
    from transformers import AutoImageProcessor

    from tuna.layout import encoder_path
    from tuna.train.build import build_model

    torch.manual_seed(cfg.run.seed)
    world = Path(cfg.run.data_dir) / "world"
    model, _ = build_model(cfg, "baseline", 1)
    model.eval()
    processor = AutoImageProcessor.from_pretrained(str(encoder_path(cfg)))
    train_paths, train_names = image_objects(world / "instruction")
    train_paths = train_paths[:max_train]
    vocab = sorted({n for p in train_paths for n in train_names.get(p, ())})
    at = {n: i for i, n in enumerate(vocab)}
    y = torch.zeros(len(train_paths), len(vocab))
    for r, p in enumerate(train_paths):
        for n in train_names.get(p, ()):
            y[r, at[n]] = 1.0
    rows = [r for r in pope_rows(world, "id") if asked_name(r["text"]) in at]
    val_paths = sorted({r["path"] for r in rows})
    t0 = time.perf_counter()
    x_train, x_val = visual_tokens(model, processor, train_paths), visual_tokens(model, processor, val_paths)
    flat = x_train.reshape(-1, x_train.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-5
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    width = x_train.shape[-1]
    head = (torch.nn.Linear(width, len(vocab)) if linear else
            torch.nn.Sequential(torch.nn.Linear(width, 256), torch.nn.GELU(), torch.nn.Linear(256, len(vocab))))
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), 128):
            j = order[i:i + 128]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x_train[j]).amax(1), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        probs = torch.sigmoid(head(x_val).amax(1))
    row_of = {p: i for i, p in enumerate(val_paths)}
    says = [bool(probs[row_of[r["path"]], at[asked_name(r["text"])]] > 0.5) for r in rows]
    return {"reader": "linear" if linear else "mlp", "tokens": x_train.shape[1], "classes": len(vocab),
            "train_images": len(train_paths), "questions": len(rows), "seconds": round(time.perf_counter() - t0),
            **score(rows, says, "id")}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("zero-shot", "tags", "train", "probe"))
    ap.add_argument("out", nargs="?", help="train: folder for result.json")
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--encoder", help="zero-shot: a CLIP folder (default: the recipe's <data_dir>/encoder)")
    ap.add_argument("--crops", type=int, default=0, help="zero-shot: also the top-1 class of each of N x N crops")
    ap.add_argument("--variant", default="baseline")
    ap.add_argument("--oracle", action="store_true", help="train: visual tokens = the LM's embeddings of the objects' names")
    ap.add_argument("--skip-stage1", action="store_true")
    ap.add_argument("--every", type=int, default=400, help="train: stage-2 steps between validation points")
    ap.add_argument("--linear", action="store_true", help="probe: one linear layer per token instead of a small MLP")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = ap.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    if args.mode != "train" and args.out:   # OUT is train's; elsewhere the first word is an override
        args.overrides, args.out = [args.out, *args.overrides], None
    cfg = load_recipe(args.config, args.overrides)
    if args.mode == "zero-shot":
        res = zero_shot(cfg, Path(args.encoder or Path(cfg.run.data_dir) / "encoder"), crops=args.crops)
        print(json.dumps(res))
        return 0
    if args.mode == "tags":
        print(json.dumps(tags_alone(cfg)))
        return 0
    if args.mode == "probe":
        print(json.dumps(token_probe(cfg, args.linear)))
        return 0
    if not args.out:
        ap.error("train needs OUT, the folder for result.json")
    if args.every < 1:
        ap.error(f"--every must be a positive number of steps, got {args.every}")
    res = fast_train(cfg, Path(args.out), args.variant, args.oracle, args.skip_stage1, args.every)
    print(json.dumps(res["pope_val"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
