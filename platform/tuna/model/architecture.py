"""The TUNA architecture without weights: configs from declared sizes, the model on the meta device, parameters per part.

What `tuna plan` counts. Nothing is downloaded or allocated: :func:`meta_tuna` builds the real
:class:`TunaForConditionalGeneration` on ``torch.device("meta")`` (shapes only), so the counts are those of the
model training would build, not a formula. Parts (:data:`PARTS`):

- ``vision_tower``: CLIP's vision transformer (what LLaVA calls the vision tower; CLIP ViT-L/14-336 ~0.30B);
- ``clip_text``: CLIP's text tower, text and visual projections (tag queries, the tuner's joint space; frozen);
- ``projector``: the connector (mlp2x_gelu ~0.02B for 1024 -> 4096);
- ``tag_encoder``, ``tuner``: TUNA's new parts;
- ``language_model``: the causal LM (Vicuna-7B ~6.74B).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import CLIPConfig, LlamaConfig
from transformers import initialization as init

from tuna.model.builder import stage_parameters
from tuna.model.configuration_tuna import TunaConfig
from tuna.model.modeling_tuna import TunaForConditionalGeneration

PARTS = ("vision_tower", "clip_text", "projector", "tag_encoder", "tuner", "language_model")
LLAVA_PARTS = ("vision_tower", "projector", "language_model")   # what a LLaVA-1.5 checkpoint holds


def clip_config_from_sizes(vision: Mapping[str, int], text: Mapping[str, int]) -> CLIPConfig:
    """A ``CLIPConfig`` from declared sizes (keys of ``tuna.recipe.plan.VisionSizes`` / ``TextSizes``)."""
    v = CLIPConfig().vision_config.to_dict() | {
        "hidden_size": vision["hidden_size"], "intermediate_size": vision["intermediate_size"],
        "num_hidden_layers": vision["layers"], "num_attention_heads": vision["heads"],
        "image_size": vision["image_size"], "patch_size": vision["patch_size"],
        "projection_dim": text["projection_dim"]}
    vocab = text["vocab_size"]
    t = CLIPConfig().text_config.to_dict() | {
        "hidden_size": text["hidden_size"], "intermediate_size": text["intermediate_size"],
        "num_hidden_layers": text["layers"], "num_attention_heads": text["heads"], "vocab_size": vocab,
        "max_position_embeddings": text["max_positions"], "projection_dim": text["projection_dim"],
        "pad_token_id": 1 % vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1}
    return CLIPConfig(text_config=t, vision_config=v, projection_dim=text["projection_dim"])


def lm_config_from_sizes(lm: Mapping[str, Any]) -> LlamaConfig:
    """A ``LlamaConfig`` from declared sizes (keys of ``tuna.recipe.plan.LMSizes``)."""
    return LlamaConfig(
        vocab_size=lm["vocab_size"], hidden_size=lm["hidden_size"], intermediate_size=lm["intermediate_size"],
        num_hidden_layers=lm["layers"], num_attention_heads=lm["heads"], num_key_value_heads=lm["kv_heads"],
        max_position_embeddings=lm["max_positions"], tie_word_embeddings=bool(lm["tie_word_embeddings"]),
        pad_token_id=0, bos_token_id=1 % lm["vocab_size"], eos_token_id=2 % lm["vocab_size"])


def meta_tuna(config: TunaConfig) -> TunaForConditionalGeneration:
    """The model ``config`` describes, on the meta device: every parameter has its shape, none has storage."""
    with torch.device("meta"), init.no_init_weights():
        model = TunaForConditionalGeneration(config)
    model.tie_weights()   # skipped under no_init_weights; a tied LM head is its embedding table, counted once
    return model


def part_modules(model: TunaForConditionalGeneration) -> dict[str, list[nn.Module]]:
    """The modules of each part of :data:`PARTS` (together they hold every parameter of the model)."""
    clip = model.clip
    return {"vision_tower": [clip.vision_model],
            "clip_text": [m for m in clip.children() if m is not clip.vision_model],
            "projector": [model.projector], "tag_encoder": [model.tag_encoder], "tuner": [model.tuner],
            "language_model": [model.language_model]}


def _unique(modules: list[nn.Module], seen: set[int]) -> int:
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:          # a tied table (embeddings = LM head) counts once
                seen.add(id(p))
                total += p.numel()
    return total


def count_parts(model: TunaForConditionalGeneration) -> dict[str, int]:
    """Parameters per part; CLIP's own parameters outside both towers (``logit_scale``) count under ``clip_text``."""
    seen: set[int] = set()
    counts = {part: _unique(mods, seen) for part, mods in part_modules(model).items()}
    counts["clip_text"] += sum(p.numel() for p in model.clip.parameters(recurse=False) if id(p) not in seen)
    return counts


def trainable_count(model: TunaForConditionalGeneration, stage: int, train_word_embeddings: bool = False) -> int:
    """Parameters that train in ``stage`` (``tuna.model.builder.stage_parameters``; tied tables once)."""
    seen: set[int] = set()
    total = 0
    for params in stage_parameters(model, stage, train_word_embeddings).values():
        for p in params.values():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def largest_layer(model: nn.Module) -> int:
    """The most parameters one module holds directly (DeepSpeed's ``largest_layer_params``: what ZeRO-3 gathers at once)."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


__all__ = ["LLAVA_PARTS", "PARTS", "clip_config_from_sizes", "count_parts", "largest_layer", "lm_config_from_sizes",
           "meta_tuna", "part_modules", "trainable_count"]
