"""The model and tokenizer a training stage starts from: stage 1 composes TUNA from the run's CLIP and LM (or a
LLaVA-1.5 + CLIP), stage 2 loads stage 1's output; built once per node first when the ranks take turns.
(``tuna.train.zero_init`` builds the same model partitioned over the ranks.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuna.errors import TrainError
from tuna.layout import layout, lm_path
from tuna.recipe import Recipe
from tuna.variants import variant_model


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    from tuna.model.processing_tuna import pad_with_unk

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise TrainError(f"cannot load a tokenizer from {source!r} ({str(err).splitlines()[0]}); run `tuna lm` or set "
                         f"model.language_model to a folder holding one") from None
    return pad_with_unk(tok)


def build_model(cfg: Recipe, variant: str, stage: int, language_model: Any = None) -> tuple[Any, Any]:
    """(model, LM tokenizer) at the start of ``stage``: freshly composed for stage 1 (around ``language_model`` when
    given, an LM already loaded from ``lm_path``), stage 1's output for 2."""
    from tuna.layout import encoder_path
    from tuna.model import TunaForConditionalGeneration, build_tuna

    settings = variant_model(cfg, variant)
    if stage == 1 and cfg.model.llava:   # LLaVA-1.5's tower, projector and LM + the full CLIP's text tower
        from tuna.model.from_llava import build_tuna_from_llava

        model = build_tuna_from_llava(cfg.model.llava, encoder_path(cfg), max_tag_tokens=8, **settings)
        return model, load_tokenizer(cfg.model.llava)
    if stage == 1:
        lm = lm_path(cfg)
        model = build_tuna(encoder_path(cfg), lm if language_model is None else language_model, max_tag_tokens=8, **settings)
        return model, load_tokenizer(lm)
    prev = layout(cfg).model(variant, 1)
    if not (prev / "config.json").is_file():
        raise TrainError(f"stage 2 of {variant!r} starts from stage 1's model, but {prev} holds none; run "
                         f"`tuna train --stage 1 --variant {variant}` first")
    model = TunaForConditionalGeneration.from_pretrained(str(prev))
    from tuna.train.freshness import init_variant

    if start := init_variant(cfg, variant):
        adopt_weights(model, layout(cfg).model(start, 2), f"train.stage2.init_from={start}", variant)
    return model, load_tokenizer(str(prev))


OWN_PARTS = ("tag_encoder.", "tuner.")   # what a tag variant keeps from its stage 1 when stage 2 starts elsewhere


def adopt_weights(model: Any, source: Path, key: str, variant: str) -> int:
    """Load every weight of the model saved in ``source`` into ``model`` except its :data:`OWN_PARTS`; returns how
    many tensors were taken. One-line TrainError when ``source`` holds no model or one of another shape."""
    from safetensors.torch import load_file

    files = sorted(source.glob("*.safetensors"))
    if not files:
        name = source.parent.parent.name
        raise TrainError(f"{key} starts the stage 2 of {variant!r} from {source}, which holds no trained model; run "
                         f"`tuna train --variant {name}` first, or set train.stage2.init_from=null")
    theirs = {k: v for f in files for k, v in load_file(str(f)).items() if not k.startswith(OWN_PARTS)}
    mine = model.state_dict()
    bad = [k for k, v in theirs.items() if k not in mine or tuple(mine[k].shape) != tuple(v.shape)]
    missing = [k for k in mine if not k.startswith(OWN_PARTS) and k not in theirs and not k.endswith("lm_head.weight")]
    if bad or missing:
        raise TrainError(f"{key}: the model in {source} does not fit {variant!r} ({len(bad)} tensors of another name or "
                         f"shape, e.g. {bad[:2]}; {len(missing)} missing, e.g. {missing[:2]}); both must come from one "
                         f"recipe's model section (set train.stage2.init_from=null otherwise)")
    model.load_state_dict(theirs, strict=False)
    return len(theirs)


def local_rank_zero_first(local_rank: int, barrier: Callable[[], None], fn: Callable[[], Any]) -> Any:
    """``fn()`` on each node's local rank 0 first (filling the node's caches, e.g. a hub download), then on the
    other ranks; every rank passes ``barrier`` (a collective) exactly once, also when ``fn`` fails."""
    if local_rank != 0:
        barrier()
    try:
        return fn()
    finally:
        if local_rank == 0:
            barrier()


__all__ = ["OWN_PARTS", "adopt_weights", "build_model", "load_tokenizer", "local_rank_zero_first"]
