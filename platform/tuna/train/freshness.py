"""When a training stage's output is up to date: the fingerprint of what it reads and how it trains.

Light on purpose (no torch, no transformers): `tuna train`, `tuna run`, a KFP train task and a DVC stage ask it
before anything starts, and a no-op run should cost a fraction of a second, not the import of the training stack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tuna.layout import encoder_path, layout, lm_path
from tuna.recipe import Recipe, section_fingerprint
from tuna.sources import file_digest, sources
from tuna.variants import fingerprint_settings, variant_model

ENGINE_VERSION = "tuna.train/1"
DATA_SOURCES = {1: "alignment", 2: "instruction"}  # the recipe's data: source each stage trains on
# stage settings that act on tags only: a tagless variant (the baseline) fingerprints them at their no-op values
TAG_ONLY = ("tag_dropout", "reading_describe", "reading_scenes", "reading_other_coarse", "image_dropout", "novel_names",
            "novel_decoys", "random_tags", "existence_tags", "init_from", "init_epochs", "init_lm_lr_scale")


def inputs_digest(cfg: Recipe, variant: str, stage: int) -> dict[str, str | None]:
    """Digests of what a stage reads: the world, the encoder, the LM, the datastores (their manifests), and
    for stage 2 the stage-1 result; any change makes the stage's output stale."""
    lay = layout(cfg)
    out = {"world": sources(cfg).digest(DATA_SOURCES[stage], "taxonomy"),
           "encoder": file_digest(Path(encoder_path(cfg)) / "manifest.json") or encoder_path(cfg),
           "lm": file_digest(Path(lm_path(cfg)) / "manifest.json") or lm_path(cfg)}
    if variant_model(cfg, variant)["tag_mode"] != "none":
        from tuna.retrieval.datastore import partner

        # the model's datastore and its captions partner (the world's A and A_captions): the variants read one of them
        for name in filter(None, (cfg.model.datastore, partner(cfg, cfg.model.datastore, "captions"))):
            out[f"datastore_{name}"] = file_digest(lay.datastore(name) / "manifest.json")
    if stage == 2:
        out["stage1"] = file_digest(lay.stage(variant, 1) / "metrics.json")
        if start := init_variant(cfg, variant):
            out[f"init_{start}"] = file_digest(lay.stage(start, 2) / "metrics.json")
    return out


def init_variant(cfg: Recipe, variant: str) -> str | None:
    """The variant whose stage-2 model starts ``variant``'s stage 2 (``train.stage2.init_from``; tag variants only),
    or None when stage 2 starts from stage 1's model."""
    start = cfg.train.stage2.init_from
    return start if start and start != variant and variant_model(cfg, variant)["tag_mode"] != "none" else None


def variant_recipe(cfg: Recipe, variant: str) -> Recipe:
    """``cfg`` as ``variant``'s training reads it: when its stage 2 starts from ``train.stage2.init_from``, stage 2's
    ``init_epochs`` / ``init_lm_lr_scale`` stand in for ``epochs`` / ``lm_lr_scale`` (those left null keep theirs)."""
    s2 = cfg.train.stage2
    if not init_variant(cfg, variant) or (s2.init_epochs is None and s2.init_lm_lr_scale is None):
        return cfg
    s2 = replace(s2, epochs=s2.epochs if s2.init_epochs is None else s2.init_epochs,
                 lm_lr_scale=s2.lm_lr_scale if s2.init_lm_lr_scale is None else s2.init_lm_lr_scale)
    return replace(cfg, train=replace(cfg.train, stage2=s2))


def training_order(cfg: Recipe, variants: Sequence[str]) -> tuple[str, ...]:
    """``variants`` with those another one's stage 2 starts from (:func:`init_variant`) moved first."""
    first = {init_variant(cfg, v) for v in variants} - {None}
    return tuple([v for v in variants if v in first] + [v for v in variants if v not in first])


def fingerprint(cfg: Recipe, variant: str, stage: int, world_size: int) -> str:
    """What a checkpoint must match to be resumed, and an output to be up to date: stage settings, model
    variant, ranks, seed, template, precision and the inputs' digests."""
    section, model = variant_recipe(cfg, variant).train.stage(stage), fingerprint_settings(variant_model(cfg, variant))
    if model["tag_mode"] == "none":   # settings that act on tags only leave a tagless variant's output as it was
        neutral = getattr(section, "_fingerprint_neutral", {})
        section = replace(section, **{k: neutral[k] for k in TAG_ONLY if k in neutral})
    payload = {
        "version": ENGINE_VERSION, "stage": stage, "stage_cfg": section_fingerprint(section), "model": model,
        "world_size": world_size, "seed": cfg.run.seed, "system": cfg.train.system_prompt, "precision": cfg.train.precision,
        "inputs": inputs_digest(cfg, variant, stage),
    }
    if cfg.model.region_grid and payload["model"]["tag_mode"] != "none":   # other tags (and reading tags) to train on
        payload["region_grid"] = cfg.model.region_grid
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def is_up_to_date(cfg: Recipe, variant: str, stage: int) -> bool:
    """True when ``variant``'s stage output exists with this config's fingerprint (on ``train.ranks`` ranks)."""
    path = layout(cfg).stage(variant, stage) / "metrics.json"
    if not path.is_file():
        return False
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if done.get("fingerprint") != fingerprint(cfg, variant, stage, cfg.train.ranks):
        return False
    return stage == 1 or is_up_to_date(cfg, variant, 1)


__all__ = ["DATA_SOURCES", "ENGINE_VERSION", "TAG_ONLY", "fingerprint", "init_variant", "inputs_digest", "is_up_to_date",
           "training_order", "variant_recipe"]
