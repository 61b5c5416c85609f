"""Pre-training and scoring the run's CLIP (`tuna encoder`): train the world's tiny CLIP contrastively on the web
corpora the recipe declares (web A + web B + the CLIP-only crawl: the "400M pairs" of our world), save it with
``save_pretrained`` to the run's ``encoder/`` folder, and score any CLIP zero-shot.

:func:`evaluate_zero_shot` scores fine-class top-1 on the FINER ID, OOD and domain-B images with
``"a photo of a {name}."`` prompts over the domain's class names: the encoder must know held-out (OOD)
classes, the half of the alignment gap TUNA relies on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from tuna.cpu_math import cpu_math
from tuna.errors import CorruptSample, DataFormatError, OutputError
from tuna.formats import load_finer
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.retrieval.clip import (
    ClipEncoder,
    _hf_progress,
    load_encoder,
)
from tuna.samples import decode_image
from tuna.sources import sources

ENCODER_VERSION = "tuna.encoder/1"
PROMPT = "a photo of a {name}."
FINER_SPLITS = {"id": "A", "ood": "A", "b": "B"}   # FINER split -> taxonomy domain whose names are the candidates


# ------------------------------------------------------------------------------------------ evaluation


def _knn_loo(emb: np.ndarray, labels: np.ndarray, k: int = 5) -> float | None:
    """Leave-one-out kNN-k accuracy (cosine, majority vote, nearest breaks ties); None below 2 samples."""
    if len(labels) < 2:
        return None
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :k]                                  # (N, k)
    hits = 0
    for i, row in enumerate(nn):
        votes: dict[Any, float] = {}
        for rank, j in enumerate(row):
            votes[labels[j]] = votes.get(labels[j], 0.0) + 1.0 + 1e-3 * (k - rank)
        hits += max(votes, key=votes.__getitem__) == labels[i]
    return hits / len(labels)


def _split_metrics(encoder: ClipEncoder, folder: Path, classes: list[dict[str, Any]], split: str) -> dict[str, Any]:
    rows = load_finer(folder / "finer.jsonl")
    images, gold, skipped = [], [], 0
    for row in rows:
        path = folder / "images" / row["image"]
        try:
            images.append(decode_image(path.read_bytes() if path.is_file() else None, str(row["id"])))
            gold.append(row["fine-level-lbl"])
        except CorruptSample:
            skipped += 1
    if not images:
        raise DataFormatError(f"{folder}: no readable FINER image ({skipped} skipped); regenerate the world (tuna world --force)")
    names = [c["name"] for c in classes]
    coarse = {c["name"]: c["coarse"] for c in classes}
    text = encoder.embed_texts([PROMPT.format(name=n) for n in names])     # (C, dim)
    emb = encoder.embed_images(images)                                     # (N, dim)
    sims = emb @ text.T                                                    # (N, C)
    order = np.argsort(-sims, axis=1)
    gold_arr = np.array(gold)
    pred = np.array(names)[order[:, 0]]
    top5 = np.array([g in {names[j] for j in o[:5]} for g, o in zip(gold, order)])
    # Candidates restricted to this split's own classes (ID names for ID, held-out names for OOD).
    own = [i for i, c in enumerate(classes) if split == "b" or bool(c["ood"]) == (split == "ood")]
    pred_own = np.array(names)[np.array(own)[np.argmax(sims[:, own], axis=1)]]
    return {
        "n": len(gold), "skipped": skipped, "candidates": len(names),
        "top1": round(float(np.mean(pred == gold_arr)), 4),
        "top5": round(float(np.mean(top5)), 4),
        "coarse_top1": round(float(np.mean([coarse[p] == coarse.get(g) for p, g in zip(pred, gold)])), 4),
        "top1_within_split": round(float(np.mean(pred_own == gold_arr)), 4),
        "knn5_loo": None if (k := _knn_loo(emb, gold_arr)) is None else round(k, 4),
    }


def evaluate_zero_shot(encoder: ClipEncoder, taxonomy_file: Path, splits: dict[str, Path]) -> dict[str, Any]:
    """Zero-shot fine-class accuracy on the FINER ID, OOD and domain-B images (``splits``: split -> FINER folder).

    Per split: ``top1`` / ``top5`` over all class names of the split's domain (prompt
    ``"a photo of a {name}."``), ``coarse_top1`` (the predicted name's coarse class is right),
    ``top1_within_split`` (candidates only the split's own classes) and ``knn5_loo`` (leave-one-out
    5-nearest-neighbour accuracy on the image embeddings, a cheap probe of the image features).
    """
    tax_path = Path(taxonomy_file)
    try:
        taxonomy = json.loads(tax_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(f"{tax_path}: not found; generate the world first (tuna world)") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{tax_path}: not valid JSON ({err.msg})") from None
    out: dict[str, Any] = {"prompt": PROMPT, "encoder": encoder.path, "fingerprint": encoder.fingerprint}
    for split, domain in FINER_SPLITS.items():
        if split not in splits:
            continue
        classes = taxonomy.get(domain, {}).get("classes")
        if not classes:
            raise DataFormatError(f"{tax_path}: no classes for domain {domain!r}")
        out[split] = _split_metrics(encoder, Path(splits[split]), classes, split)
    return out


def summary_line(metrics: dict[str, Any]) -> str:
    """``zero-shot fine top-1: ID 85.0% | OOD 82.3% | B 90.0%`` for logs and the CLI."""
    parts = [f"{s.upper()} {100 * metrics[s]['top1']:.1f}%" for s in FINER_SPLITS if s in metrics]
    if not parts:
        return f"zero-shot not measured ({metrics.get('skipped', 'no FINER split')})"
    return "zero-shot fine top-1: " + " | ".join(parts)


# ------------------------------------------------------------------------------------------- training


ENCODER_SOURCES = ("web_A", "web_B", "web_clip", "taxonomy", "finer_id", "finer_ood", "finer_b")


def _world_manifest(cfg: Recipe) -> dict[str, Any]:
    path = layout(cfg).world_manifest
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise DataFormatError(f"no world at {path.parent} (manifest.json missing or unreadable); "
                              f"generate it first: tuna world --config <recipe>") from None


def _all_from_world(cfg: Recipe) -> bool:
    src = sources(cfg)
    return all(src.has(name) and src[name].from_world for name in ENCODER_SOURCES)


def _data_fingerprint(cfg: Recipe) -> str | None:
    """What the encoder's inputs are: when the world provides them all, the world manifest's digests of the
    folders holding them (web corpora, taxonomy, FINER), so a world change that leaves them as they were (an
    instruction or eval size) keeps the encoder; else their digest."""
    src = sources(cfg)
    if not _all_from_world(cfg):
        return src.digest(*ENCODER_SOURCES)
    manifest, root = _world_manifest(cfg), layout(cfg).world
    digests: dict[str, str] = manifest.get("digests", {})
    held = set()
    for name in ENCODER_SOURCES:
        rel = src[name].path.relative_to(root).as_posix()
        held.update(k for k in digests if rel == k or rel.startswith(f"{k}/"))
    payload = {"generator": manifest.get("generator"), "seed": manifest.get("seed"), "digests": {k: digests[k] for k in sorted(held)}}
    return "world-inputs:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _legacy_data_fingerprint(cfg: Recipe) -> str | None:
    """What encoders saved before :func:`_data_fingerprint` read the folders: the whole world's fingerprint (the
    world's config and seed); such an encoder is up to date while the world is the one it was trained on."""
    return _world_manifest(cfg).get("fingerprint") if _all_from_world(cfg) else None


# Encoder keys added after encoders were already trained, with the value that reproduces them: at that
# value they are left out of the config fingerprint, so existing encoders stay up to date.
_LATER_KEYS: dict[str, Any] = {"clean_captions": 0.0, "patch_loss": 0.0, "patch_loss_layer": -2,
                               "object_loss": 0.0, "object_loss_tokens": "cls"}


def _config_fingerprint(enc: Any) -> str:
    """``section_fingerprint(cfg.encoder)``, leaving out later keys at their reproducing value."""
    fields = dataclasses.asdict(enc)
    for key, off in _LATER_KEYS.items():
        if fields.get(key) == off:
            del fields[key]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def web_corpora(cfg: Recipe) -> dict[str, Path]:
    """The web corpora the encoder trains on (label -> folder): web A, web B (when enabled) and, when present, the
    CLIP-only crawl."""
    src = sources(cfg)
    folders = {f"web/{d}": src.web(d).path for d in ("A", "B") if d == "A" or src.has(f"web_{d}")}
    if src.has("web_clip"):
        clip = src.web("clip").path
        if clip.is_dir() or not src.web("clip").from_world:   # the world writes it only when world.sizes.clip_web > 0
            folders["web/clip"] = clip
    return folders


def zero_shot_splits(cfg: Recipe) -> tuple[Path, dict[str, Path]] | None:
    """(taxonomy file, split -> FINER folder) the zero-shot evaluation reads; None without a taxonomy (real data:
    the zero-shot names come from the world's taxonomy)."""
    src = sources(cfg)
    if not src.has("taxonomy"):
        return None
    return src["taxonomy"].path, {split: src.eval_set("finer", split).path for split in src.splits("finer")}


def zero_shot(encoder: ClipEncoder, cfg: Recipe) -> dict[str, Any]:
    """:func:`evaluate_zero_shot` on the recipe's splits, or a note that it was not measured."""
    splits = zero_shot_splits(cfg)
    if splits is None:
        return {"skipped": "data.taxonomy is disabled", "encoder": encoder.path, "fingerprint": encoder.fingerprint}
    return evaluate_zero_shot(encoder, *splits)


def _inputs(cfg: Recipe, data_fingerprint: str | None) -> dict[str, Any]:
    """Everything the trained weights depend on; equal inputs mean the saved encoder is up to date."""
    inputs = {"encoder_config": _config_fingerprint(cfg.encoder), "seed": cfg.run.seed,
              "world": data_fingerprint, "max_caption_chars": cfg.mine.max_caption_chars}
    if cfg.encoder.clean_captions > 0 or cfg.encoder.object_loss > 0:  # the tag miner decides cleaned captions / objects
        inputs["spacy_model"] = cfg.mine.spacy_model
    return inputs


def is_up_to_date(cfg: Recipe) -> bool:
    """True when ``<data_dir>/encoder`` was trained by this code from the same config, seed and world."""
    target = layout(cfg).encoder
    try:
        manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        data_fingerprint = _data_fingerprint(cfg)
    except (OSError, json.JSONDecodeError, DataFormatError):
        return False
    saved = manifest.get("inputs")
    legacy = _legacy_data_fingerprint(cfg)
    return (manifest.get("version") == ENCODER_VERSION and (target / "config.json").is_file()
            and (saved == _inputs(cfg, data_fingerprint) or (legacy is not None and saved == _inputs(cfg, legacy))))


def _remove_stale_tmp(target: Path) -> None:
    """Delete ``.encoder.tmp-<pid>`` folders left by killed runs (their process is gone)."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not ours to judge: a foreign name, or a live process of another user


def _count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_encoder(cfg: Recipe, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the tiny CLIP on web A + web B (+ the world's CLIP-only crawl, ``world.sizes.clip_web``),
    evaluate it zero-shot, save it to ``<data_dir>/encoder``.

    The folder holds the model, tokenizer and image processor (``save_pretrained``), ``manifest.json``
    (encoder hash, corpus hash, config, timings, loss curve), ``metrics.json`` and ``quarantine.jsonl``.
    It is written to a temporary folder and renamed into place at the end. Returns the manifest.
    """
    from tuna.foundation import clip_train

    enc = cfg.encoder
    data_fingerprint = _data_fingerprint(cfg)
    target = layout(cfg).encoder
    _remove_stale_tmp(target)
    try:
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as err:
        raise OutputError(f"cannot write the encoder under {str(target.parent)!r} ({err.strerror or err}); "
                          f"set run.data_dir to a writable folder") from None
    with cpu_math(enc.threads):
        t0 = time.perf_counter()
        try:
            processor = clip_train.build_processor(cfg.world.image_size)
            pairs = clip_train.load_pairs(web_corpora(cfg), processor, cfg.mine.max_caption_chars, progress)
            log(f"encoder data: {pairs.quarantine.summary(pairs.total, 'web pairs')}")
            cleaned: list[str | None] | None = None
            cleaning: dict[str, Any] = {"rate": enc.clean_captions}
            objects: clip_train.ObjectTargets | None = None
            if enc.clean_captions > 0 or enc.object_loss > 0:
                t_clean = time.perf_counter()
                mined = clip_train.mine_objects(pairs.captions, cfg.mine)
                seconds = round(time.perf_counter() - t_clean, 1)
                if enc.clean_captions > 0:
                    cleaned = clip_train.clean_captions(pairs.captions, cfg.mine, objects=mined)
                    found = sum(c is not None for c in cleaned)
                    cleaning.update(with_objects=found, seconds=seconds)
                    log(f"encoder captions: {found}/{len(cleaned)} cleaned to their mined objects in {seconds:.0f}s "
                        f"(used for {enc.clean_captions:.0%} of the pairs at each step)")
                if enc.object_loss > 0:
                    objects = clip_train.ObjectTargets.from_objects(mined)
                    log(f"encoder object loss: {len(objects.vocabulary)} mined nouns named by >= "
                        f"{clip_train.OBJECT_MIN_COUNT} captions, {float(objects.targets.sum(1).mean()):.2f} per pair "
                        f"(weight {enc.object_loss}, on {enc.object_loss_tokens})")
            tokenizer = clip_train.build_tokenizer(pairs.captions + [c for c in cleaned or [] if c], enc.max_text_tokens)
            torch.manual_seed(cfg.run.seed)
            model = clip_train.build_model(enc, tokenizer, cfg.world.image_size)
            log(f"encoder: CLIPModel with {_count_params(model.vision_model) / 1e6:.2f}M vision + "
                f"{_count_params(model.text_model) / 1e6:.2f}M text parameters, vocabulary {len(tokenizer)}, "
                f"{len(pairs.captions)} pairs x {enc.epochs} epochs on {enc.threads} threads")
            curve = clip_train.train_clip(model, pairs, tokenizer, processor, enc, cfg.run.seed, progress, log, cleaned=cleaned,
                                          objects=objects)
            with _hf_progress(False):
                model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            pairs.quarantine.write(tmp / "quarantine.jsonl")
            encoder = ClipEncoder(model, tokenizer, processor, path=str(target))
            t_eval = time.perf_counter()
            metrics = zero_shot(encoder, cfg)
            metrics["encoder"] = str(target)
            eval_seconds = time.perf_counter() - t_eval
            manifest = {
                "version": ENCODER_VERSION,
                "encoder_hash": encoder.encoder_hash,
                "fingerprint": encoder.fingerprint,
                "dim": encoder.dim,
                "corpus_hash": pairs.corpus_sha256,
                "corpora": pairs.per_corpus,
                "pairs": len(pairs.captions),
                "clean_captions": cleaning,
                **({"object_loss": {"vocabulary": len(objects.vocabulary), "per_epoch": curve["object_per_epoch"]}}
                   if objects is not None else {}),
                "quarantined": {"count": len(pairs.quarantine), "kinds": pairs.quarantine.reasons()},
                "inputs": _inputs(cfg, data_fingerprint),
                "config": cfg.to_dict()["encoder"],
                "image_size": cfg.world.image_size,
                "vocab_size": len(tokenizer),
                "params": {"vision": _count_params(model.vision_model), "text": _count_params(model.text_model),
                           "total": _count_params(model)},
                "train_seconds": curve["train_seconds"],
                "eval_seconds": round(eval_seconds, 1),
                "total_seconds": round(time.perf_counter() - t0, 1),
                "loss": {k: curve[k] for k in ("first", "last_epoch", "per_epoch", "steps", "batch_size")},
                "temperature": round(1.0 / curve["logit_scale"], 5),
                "zero_shot_top1": {s: metrics[s]["top1"] for s in FINER_SPLITS if s in metrics},
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            if target.exists():
                target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"encoder {encoder.fingerprint} written to {target} in {manifest['total_seconds']:.0f}s "
        f"(training {manifest['train_seconds']:.0f}s); {summary_line(metrics)}")
    return manifest


def run_encoder(cfg: Recipe, force: bool = False, progress: bool = True,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``tuna encoder`` step: evaluate ``model.vision_tower`` when set, else train (unless up to date).

    Returns ``{"status": "trained" | "up to date" | "loaded", "path", "fingerprint", "dim", "metrics"}``.
    """
    if cfg.model.vision_tower:
        encoder = load_encoder(cfg.model.vision_tower)
        metrics = zero_shot(encoder, cfg)
        return {"status": "loaded", "path": encoder.path, "fingerprint": encoder.fingerprint, "dim": encoder.dim,
                "metrics": metrics}
    target = layout(cfg).encoder
    if not force and is_up_to_date(cfg):
        manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
        metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
        return {"status": "up to date", "path": str(target), "fingerprint": manifest["fingerprint"],
                "dim": manifest["dim"], "metrics": metrics}
    manifest = train_encoder(cfg, progress=progress, log=log)
    metrics = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
    return {"status": "trained", "path": str(target), "fingerprint": manifest["fingerprint"], "dim": manifest["dim"],
            "metrics": metrics, "train_seconds": manifest["train_seconds"]}
