"""Initialise TUNA from a LLaVA-1.5 checkpoint in Hugging Face format plus a full CLIP.

A ``LlavaForConditionalGeneration`` folder (``llava-hf/llava-1.5-7b-hf`` layout: ``config.json`` with
``model_type: llava`` + safetensors) gives the vision tower, the projector and the LM; a full ``CLIPModel``
folder gives what LLaVA does not ship: the text tower + text projection the tag encoder queries with, and the
visual projection the tuner compares tags in. The tag encoder and the tuner start fresh.

- :func:`check_llava_pair` reads only the two ``config.json`` files and raises :class:`ModelLoadError` (one line:
  the bad path or value and the fix) for a folder that is not a LLaVA, a CLIP without a text tower, or a CLIP
  whose vision tower does not match LLaVA's (widths, depth, image/patch size).
- :func:`build_tuna_from_llava` loads both and composes TUNA with LLaVA's vision tower weights inside the
  CLIP, LLaVA's ``multi_modal_projector`` as the connector and LLaVA's decoder + ``lm_head`` as the causal LM
  (the modules are adopted, not copied: no second copy of a 7B LM in memory).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPConfig,
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)

from tuna.model.builder import ModelLoadError, build_tuna
from tuna.model.modeling_tuna import TunaForConditionalGeneration

# The vision-tower fields that must agree between LLaVA's tower and the CLIP's (else the weights cannot move).
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "num_channels")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LLAVA_FIX = ("point model.llava at a LlavaForConditionalGeneration folder written by save_pretrained "
             "(config.json with model_type 'llava' + weights), e.g. a download of llava-hf/llava-1.5-7b-hf")
CLIP_FIX = ("point model.vision_tower at the full CLIPModel the LLaVA was trained with (both towers; "
            "LLaVA-1.5: openai/clip-vit-large-patch14-336)")


def _config(key: str, source: str | os.PathLike, fix: str) -> PretrainedConfig:
    """The config at ``source`` (a folder, or a hub id in the local cache); one-line errors naming ``key``."""
    src = os.fspath(source)
    local = Path(src).expanduser()
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"{key}: {src!r} is a file, not a model folder; {fix}")
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelLoadError(f"{key}: {src!r} holds no config.json (not a save_pretrained folder); {fix}")
    if not local.is_dir() and (src.startswith((".", "/", "~")) or not _HUB_ID.match(src)):
        raise ModelLoadError(f"{key}: no folder at {src!r}; {fix}")
    try:
        return AutoConfig.from_pretrained(str(local) if local.is_dir() else src)
    except (OSError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"{key}: cannot read the config at {src!r} ({type(err).__name__}: {first}); {fix}") from None


def check_llava_config(llava: str | os.PathLike) -> LlavaConfig:
    """Read and check a LLaVA folder's config (no weights): ``model_type`` llava with a CLIP vision tower."""
    lcfg = _config("model.llava", llava, LLAVA_FIX)
    if lcfg.model_type != "llava":
        raise ModelLoadError(f"model.llava: {os.fspath(llava)!r} holds a {lcfg.model_type!r} model, not LLaVA "
                             f"(model_type 'llava'); {LLAVA_FIX}")
    vision = lcfg.vision_config
    if vision.model_type != "clip_vision_model":
        raise ModelLoadError(f"model.llava: its vision tower is {vision.model_type!r}, not a CLIP vision model; TUNA "
                             f"builds on LLaVA-1.5 (CLIP ViT); use a LLaVA-1.5 checkpoint")
    if not isinstance(lcfg.vision_feature_layer, int):
        raise ModelLoadError(f"model.llava: vision_feature_layer {lcfg.vision_feature_layer!r} reads several CLIP "
                             f"layers; TUNA's connector reads one (LLaVA-1.5: -2)")
    if not getattr(lcfg, "multimodal_projector_bias", True):
        raise ModelLoadError("model.llava: its projector has no biases (multimodal_projector_bias false); TUNA's "
                             "mlp2x_gelu connector has them; use a LLaVA-1.5 checkpoint")
    return lcfg


def check_llava_pair(llava: str | os.PathLike, clip: str | os.PathLike) -> tuple[LlavaConfig, CLIPConfig]:
    """Read and check the two configs (no weights): a LLaVA with a CLIP vision tower, a full CLIP matching it."""
    lcfg = check_llava_config(llava)
    vision = lcfg.vision_config
    ccfg = _config("model.vision_tower", clip, CLIP_FIX)
    if ccfg.model_type == "clip_vision_model":
        raise ModelLoadError(f"model.vision_tower: {os.fspath(clip)!r} is a CLIP without a text tower "
                             f"(CLIPVisionModel); the tag encoder encodes tags with CLIP's text tower; {CLIP_FIX}")
    if ccfg.model_type != "clip":
        raise ModelLoadError(f"model.vision_tower: {os.fspath(clip)!r} holds a {ccfg.model_type!r} model, not CLIP; {CLIP_FIX}")
    for name in VISION_FIELDS:
        ours, theirs = getattr(ccfg.vision_config, name), getattr(vision, name)
        if ours != theirs:
            raise ModelLoadError(f"model.vision_tower: the CLIP's vision {name} is {ours} but model.llava's vision "
                                 f"tower has {theirs}; {CLIP_FIX}")
    return lcfg, ccfg


def _same(key: str, ours: Any, theirs: Any, why: str) -> None:
    if ours != theirs:
        raise ModelLoadError(f"{key}: {ours!r}, but the LLaVA checkpoint's projector was trained on {theirs!r} ({why}); "
                             f"set {key}={theirs}")


def llava_language_model(source: LlavaForConditionalGeneration) -> PreTrainedModel:
    """The causal LM inside a loaded LLaVA (``AutoModelForCausalLM`` of its text config) holding LLaVA's own decoder
    and ``lm_head`` modules: adopted, not copied, so the two share their weights."""
    inner = source.model
    with torch.device("meta"):  # an empty shell whose decoder and head become LLaVA's own modules
        lm = AutoModelForCausalLM.from_config(source.config.text_config)
    if not isinstance(getattr(lm, lm.base_model_prefix, None), type(inner.language_model)):
        raise ModelLoadError(f"model.llava: its LM {type(lm).__name__} keeps no {type(inner.language_model).__name__} "
                             f"under {lm.base_model_prefix!r}; this LM type is not supported")
    setattr(lm, lm.base_model_prefix, inner.language_model)   # (set_decoder is a no-op on Llama in transformers 5)
    lm.set_output_embeddings(source.lm_head)
    lm.config = inner.language_model.config
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"model.llava: the LM {type(lm).__name__} kept unloaded tensors {left[:3]} after adopting "
                             f"LLaVA's decoder and head; this LM type is not supported")
    return lm.train(source.training)


def load_llava(llava: str | os.PathLike, dtype: torch.dtype | None = None) -> LlavaForConditionalGeneration:
    """Load a ``LlavaForConditionalGeneration`` folder after :func:`check_llava_config`; one-line errors."""
    check_llava_config(llava)
    try:
        return LlavaForConditionalGeneration.from_pretrained(os.fspath(llava), **({"dtype": dtype} if dtype else {}))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"model.llava: cannot load the weights in {os.fspath(llava)!r} ({type(err).__name__}: "
                             f"{first}); check the folder is a complete save_pretrained output") from None


def build_tuna_from_llava(
    llava: str | os.PathLike,
    clip: str | os.PathLike,
    *,
    projector: str = "mlp2x_gelu",
    vision_feature_layer: int | None = None,
    vision_feature_select_strategy: str | None = None,
    vision_feature_pool: int = 1,
    vision_crops: int = 0,
    dtype: torch.dtype | None = None,
    **settings: Any,
) -> TunaForConditionalGeneration:
    """TUNA with LLaVA's vision tower, projector and LM; CLIP's text tower and projections; fresh tag encoder + tuner.

    ``vision_feature_layer`` / ``vision_feature_select_strategy`` default to the checkpoint's and must equal them
    when given (the projector was trained on those features); ``settings`` go to :func:`build_tuna`
    (``num_tags``, ``tag_mode``, ``tuner``, ``max_tag_tokens``, ...).
    """
    lcfg, _ = check_llava_pair(llava, clip)
    layer = lcfg.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
    strategy = vision_feature_select_strategy or lcfg.vision_feature_select_strategy
    _same("model.projector", projector, "mlp2x_gelu", "LLaVA-1.5's connector")
    _same("model.vision_feature_layer", layer, lcfg.vision_feature_layer, "the CLIP layer it reads")
    _same("model.vision_feature_select_strategy", strategy, lcfg.vision_feature_select_strategy, "CLS kept or dropped")
    _same("model.vision_feature_pool", vision_feature_pool, 1, "the whole patch grid")
    _same("model.vision_crops", vision_crops, 0, "no crop tokens")
    source = load_llava(llava, dtype)
    try:
        clip_model = CLIPModel.from_pretrained(os.fspath(clip), **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"model.vision_tower: cannot load the weights in {os.fspath(clip)!r} ({type(err).__name__}: "
                             f"{first}); check the folder is a complete save_pretrained output") from None
    inner = source.model
    clip_model.vision_model.load_state_dict(inner.vision_tower.state_dict(), strict=True)   # LLaVA's tower wins
    lm = llava_language_model(source)
    model = build_tuna(clip_model, lm, projector="mlp2x_gelu", vision_feature_layer=layer,
                       vision_feature_select_strategy=strategy, vision_feature_pool=1,
                       projector_hidden_act=lcfg.projector_hidden_act, **settings)
    with torch.no_grad():
        model.projector.load_state_dict(inner.multi_modal_projector.state_dict(), strict=True)
    return model


__all__ = ["VISION_FIELDS", "build_tuna_from_llava", "check_llava_config", "check_llava_pair", "llava_language_model",
           "load_llava"]
