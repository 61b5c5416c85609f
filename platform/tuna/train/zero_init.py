"""ZeRO-3 partitioned construction (``train.zero3_init``): a stage on ZeRO-3 builds its model already split over the
ranks, so no rank ever holds the whole model (LLaVA-1.5-7B: ~14 GB in bf16 per rank otherwise).

Transformers' DeepSpeed integration does the work: while a :class:`HfDeepSpeedConfig` of a ZeRO-3 config is alive,
``from_pretrained`` constructs under ``deepspeed.zero.Init`` and rank 0 alone reads the checkpoint's values into
the partitions. TUNA's own new parts (connector, tag encoder, tuner: ~1% of a 7B) are built whole and partitioned
by ``deepspeed.initialize``, so their initialisation is the same as without partitioning.

- :func:`build_partitioned`: the stage's model built that way (engine.prepare_stage calls it).
- :func:`check_partitionable`: one line for a checkpoint that cannot be built partitioned (quantized weights, a
  DeepSpeed checkpoint folder instead of a Hugging Face one), before any rank builds.
- :func:`partitioned_init`: the context in which ``from_pretrained`` partitions.
- :func:`prefetch`: a hub checkpoint downloaded once per node (partitioned construction is a collective: every
  rank must build at the same time, so ranks cannot take turns as they do otherwise).
- :func:`held`: how many of the model's parameters this rank holds (the measure that partitioning happened).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuna.errors import TrainError
from tuna.layout import lm_path
from tuna.recipe import Recipe
from tuna.train.build import build_model, local_rank_zero_first

ZERO_CKPT_FILES = ("latest", "zero_to_fp32.py")   # what `engine.save_checkpoint` leaves in a DeepSpeed checkpoint folder


def check_partitionable(key: str, source: str) -> None:
    """Raise TrainError (one line naming ``key``) when the checkpoint at ``source`` cannot be built partitioned."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return  # a hub id (fetched by prefetch) or a missing path (the builder's own one-line error names it)
    config = folder / "config.json"
    if not config.is_file():
        zero = any((folder / f).exists() for f in ZERO_CKPT_FILES) or any(folder.glob("global_step*")) \
            or any(folder.glob("*/*_model_states.pt"))
        what = "a DeepSpeed ZeRO checkpoint" if zero else "not a Hugging Face model folder (no config.json)"
        fix = ("consolidate it first (python zero_to_fp32.py <folder> <out>, then save_pretrained) or point at the "
               "stage's model/ folder" if zero else "point it at a folder written by save_pretrained")
        raise TrainError(f"train.zero3_init: {key} {source!r} is {what}, which cannot be built partitioned; {fix}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return  # the builder names the unreadable config
    quantized = [c.get("quantization_config") for c in (data, data.get("text_config") or {}) if isinstance(c, dict)]
    method = next((q.get("quant_method", "quantized") if isinstance(q, dict) else "quantized" for q in quantized if q), None)
    if method:
        raise TrainError(f"train.zero3_init: {key} {source!r} holds {method} weights, which DeepSpeed cannot partition "
                         f"(transformers would build the whole model on every rank); point it at the unquantized "
                         f"checkpoint or set train.zero3_init=false")


@contextmanager
def partitioned_init(ds_config: dict[str, Any]) -> Iterator[None]:
    """``from_pretrained`` calls inside build partitioned over the ranks (the DeepSpeed config must be ZeRO-3)."""
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    stage = ds_config.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise TrainError(f"partitioned init needs a ZeRO-3 DeepSpeed config, got zero_optimization.stage {stage}")
    keep = HfDeepSpeedConfig(ds_config)  # transformers holds only a weak reference: keep it alive for the block
    try:
        yield
    finally:
        del keep
        unset_hf_deepspeed_config()


def prefetch(sources: list[str]) -> None:
    """Download the hub ids among ``sources`` into the local cache (local folders are left alone)."""
    hub = [s for s in sources if not Path(s).expanduser().exists()]
    if hub:
        from huggingface_hub import snapshot_download

        for repo in hub:
            try:
                snapshot_download(repo)
            except Exception as err:  # noqa: BLE001 - the builder's own one-line error follows; keep the first cause
                raise TrainError(f"cannot fetch {repo!r} before the partitioned build ({type(err).__name__}); "
                                 f"download it into a folder and point the recipe at that folder") from None


def held(model: Any) -> dict[str, int]:
    """``{"params", "held", "partitioned"}``: the model's parameter count, how many of them this rank holds, and how
    many parameters are ZeRO-3 partitioned (DeepSpeed's ``ds_numel`` / ``ds_tensor``)."""
    total = mine = parted = 0
    for p in model.parameters():
        if hasattr(p, "ds_numel"):
            total += p.ds_numel
            mine += p.ds_tensor.numel()
            parted += p.ds_numel
        else:
            total += p.numel()
            mine += p.numel()
    return {"params": total, "held": mine, "partitioned": parted}


def checkpoint_sources(cfg: Recipe, variant: str, stage: int) -> dict[str, str]:
    """The checkpoints ``build_model`` reads for ``stage``, by the recipe key (or output) that names them."""
    from tuna.layout import encoder_path, layout

    if stage == 2:
        return {f"stage 1's model of {variant!r}": str(layout(cfg).model(variant, 1))}
    if cfg.model.llava:
        return {"model.llava": cfg.model.llava, "model.vision_tower": encoder_path(cfg)}
    return {"model.vision_tower": encoder_path(cfg), "model.language_model": lm_path(cfg)}


def build_partitioned(cfg: Recipe, variant: str, stage: int, local_rank: int,
                      barrier: Callable[[], None]) -> tuple[Any, Any, dict[str, int]]:
    """(model, tokenizer, held counts) built under ZeRO-3 partitioning (``train.zero3_init``): every rank builds at
    once (a collective); hub checkpoints are fetched by each node's local rank 0 first."""
    import torch.distributed as dist
    from transformers import AutoConfig

    from tuna.train import ds_config

    if stage == 1 and cfg.model.llava:
        raise TrainError("train.zero3_init with train.stage1.zero_stage=3 and model.llava: LLaVA's vision tower and projector "
                         "are copied into TUNA's parts, which partitioned parameters cannot take; train stage 1 on ZeRO-2 "
                         "(LLaVA-1.5 trains only the connector there) or set train.zero3_init=false")
    from tuna.train.freshness import init_variant

    if stage == 2 and init_variant(cfg, variant):
        raise TrainError(f"train.zero3_init with train.stage2.zero_stage=3 and train.stage2.init_from="
                         f"{cfg.train.stage2.init_from}: the finished model's weights are copied into the stage-1 model, "
                         f"which partitioned parameters cannot take; set train.zero3_init=false (ZeRO-3 still "
                         f"partitions the model once built) or train.stage2.init_from=null")
    sources = checkpoint_sources(cfg, variant, stage)
    for key, src in sources.items():
        check_partitionable(key, src)
    local_rank_zero_first(local_rank, barrier, lambda: prefetch(list(sources.values())))
    lm = list(sources.values())[-1]
    text = AutoConfig.from_pretrained(lm)
    hidden = getattr(getattr(text, "text_config", None), "hidden_size", None) or text.hidden_size
    world = dist.get_world_size() if dist.is_initialized() else 1
    ds = ds_config.resolve(cfg, stage, world, hidden_size=hidden)
    if stage == 2:   # the whole TUNA checkpoint, every part constructed partitioned
        with partitioned_init(ds):
            model, tokenizer = build_model(cfg, variant, stage)
        return model, tokenizer, held(model)
    # Stage 1: the LM partitioned; the CLIP (0.43B for CLIP-L/336) and the new parts whole until deepspeed.initialize
    # partitions them (a stock CLIP checkpoint holds a 0-d logit_scale, which partitioned construction cannot take).
    from transformers import AutoModelForCausalLM

    from tuna.model.builder import load_pretrained

    with partitioned_init(ds):
        lm_model = load_pretrained("language model", sources["model.language_model"], AutoModelForCausalLM)
    model, tokenizer = build_model(cfg, variant, stage, language_model=lm_model)
    return model, tokenizer, held(model)

__all__ = ["build_partitioned", "check_partitionable", "checkpoint_sources", "held", "partitioned_init", "prefetch"]
