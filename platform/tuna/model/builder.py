"""Build TUNA from a saved CLIP and a saved causal LM; which parameters train in each stage; export the baseline as LLaVA.

- :func:`build_tuna` composes ``CLIPModel`` + causal LM (by path, hub id or object) into a
  :class:`TunaForConditionalGeneration`: locally the world's tiny CLIP (``<data_dir>/encoder``) and tiny
  Llama; on a cluster ``openai/clip-vit-large-patch14-336`` + ``lmsys/vicuna-7b-v1.5``.
- :func:`stage_parameters` / :func:`set_trainable` say which groups train: stage 1 the connector and the
  tag encoder; stage 2 also the tuner and the LM, with the word-embedding table frozen by default.
- :func:`to_llava` turns a ``tag_mode="none"`` model into a ``transformers.LlavaForConditionalGeneration``
  with the same weights (the baseline in a standard format; its input ids repeat `<image>` P times).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)

from tuna.errors import TunaError
from tuna.model.configuration_tuna import IMAGE_TOKEN_INDEX, TunaConfig
from tuna.model.modeling_tuna import TunaForConditionalGeneration

STAGE_GROUPS = {1: ("projector", "tag_encoder"), 2: ("projector", "tag_encoder", "tuner", "language_model")}


class ModelLoadError(TunaError, FileNotFoundError):
    """A checkpoint named for the vision tower or the LM cannot be loaded."""


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def load_pretrained(kind: str, source: str | os.PathLike, loader: Any, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """``loader.from_pretrained(source)``; a checkpoint that cannot be loaded is one ModelLoadError line naming ``kind``."""
    src = os.fspath(source)
    try:
        return loader.from_pretrained(src, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load the {kind} from {src!r} ({_first_line(err)}); point it at a folder "
                             f"written by save_pretrained (or a hub id reachable from here)") from None


def build_tuna(
    clip: str | os.PathLike | CLIPModel,
    language_model: str | os.PathLike | PreTrainedModel,
    *,
    projector: str = "mlp2x_gelu",
    vision_feature_layer: int = -2,
    num_tags: int = 5,
    tag_mode: str = "tags",
    tuner: bool = True,
    max_tag_tokens: int = 8,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    dtype: torch.dtype | None = None,
    **config_kwargs: Any,
) -> TunaForConditionalGeneration:
    """Compose a CLIP and a causal LM into TUNA; CLIP's towers frozen, new parts freshly initialised.

    The keyword names match ``tuna.recipe.ModelConfig`` (``projector``, ``vision_feature_layer``,
    ``num_tags``, ``tag_mode``, ``tuner``); ``config_kwargs`` go to :class:`TunaConfig` as they are
    (e.g. ``tag_encoder_heads``, ``tag_weight_norm``). ``dtype`` applies to checkpoints loaded by path.
    """
    if not isinstance(clip, CLIPModel):
        clip = load_pretrained("CLIP encoder", clip, CLIPModel, dtype)
    if not isinstance(language_model, PreTrainedModel):
        language_model = load_pretrained("language model", language_model, AutoModelForCausalLM, dtype)
    if language_model.get_output_embeddings() is None:
        raise ModelLoadError(f"{type(language_model).__name__} has no LM head; pass a causal LM "
                             f"(AutoModelForCausalLM), not a bare backbone")
    # A new composite config resets its sub-configs' attention implementation unless told: keep the loaded ones.
    attn = {"clip_config": clip.config._attn_implementation, "text_config": language_model.config._attn_implementation}
    config = TunaConfig(
        clip_config=clip.config, text_config=language_model.config, projector_type=projector,
        vision_feature_layer=vision_feature_layer, num_tags=num_tags, tag_mode=tag_mode, use_tuner=tuner,
        max_tag_tokens=max_tag_tokens, image_token_index=image_token_index, attn_implementation=attn,
        **config_kwargs)
    return TunaForConditionalGeneration(config, clip=clip, language_model=language_model)


def stage_parameters(model: TunaForConditionalGeneration, stage: int, train_word_embeddings: bool = False,
                     train_vision_tower: bool = False) -> dict[str, dict[str, nn.Parameter]]:
    """Which parameters train in ``stage`` (1 or 2), by group: ``{group: {name: parameter}}``.

    Stage 1: ``projector`` + ``tag_encoder``. Stage 2: those plus ``tuner`` and ``language_model``; the
    LM's input embedding table stays frozen unless ``train_word_embeddings`` (DESIGN.md: unfrozen, OOD
    names were lost); with tied embeddings the LM head is that same table. CLIP's vision tower trains only
    with ``train_vision_tower`` (group ``vision_tower``: its transformer, not the projection into the joint
    space), its text tower never. The tag encoder and tuner are left out in tag_mode "none" (unused), the
    tuner also when ``use_tuner`` is off.
    """
    if stage not in STAGE_GROUPS:
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    cfg = model.config
    skip = set()
    if cfg.tag_mode == "none":
        skip |= {"tag_encoder", "tuner"}
    if not cfg.use_tuner:
        skip.add("tuner")
    frozen_ids = set() if train_word_embeddings else {id(p) for p in model.get_input_embeddings().parameters()}
    groups: dict[str, dict[str, nn.Parameter]] = {}
    for group in STAGE_GROUPS[stage]:
        if group in skip:
            continue
        module = getattr(model, group)
        groups[group] = {f"{group}.{n}": p for n, p in module.named_parameters() if id(p) not in frozen_ids}
    if train_vision_tower:
        groups["vision_tower"] = {f"clip.vision_model.{n}": p for n, p in model.clip.vision_model.named_parameters()}
    return groups


def set_trainable(model: TunaForConditionalGeneration, stage: int, train_word_embeddings: bool = False,
                  train_vision_tower: bool = False) -> dict[str, dict[str, nn.Parameter]]:
    """Set ``requires_grad`` for ``stage`` (everything else frozen) and return :func:`stage_parameters`."""
    groups = stage_parameters(model, stage, train_word_embeddings, train_vision_tower)
    model.requires_grad_(False)
    for params in groups.values():
        for p in params.values():
            p.requires_grad_(True)
    return groups


def to_llava(model: TunaForConditionalGeneration, add_image_token: bool = False) -> LlavaForConditionalGeneration:
    """A ``LlavaForConditionalGeneration`` with this baseline's CLIP vision tower, connector and LM weights.

    Only for tag_mode "none" with the ``mlp2x_gelu`` connector (LLaVA has no other); Llava's input ids
    carry the image token ``config.num_patches`` times where TUNA's carry it once. Llava embeds its image
    token, so it must be an id of the vocabulary: a model trained with LLaVA's -200 (never embedded) needs
    ``add_image_token``, which appends one row for ``<image>`` at id V (as llava-hf's checkpoints extend
    Vicuna's 32000 tokens): zero embedding (replaced by image features, never read) and zero head row, whose
    logit generate suppresses; the other V logits are unchanged.
    """
    cfg = model.config
    if cfg.tag_mode != "none" or cfg.projector_type != "mlp2x_gelu":
        raise ValueError(f"to_llava needs tag_mode 'none' and projector 'mlp2x_gelu', got tag_mode {cfg.tag_mode!r} "
                         f"and projector {cfg.projector_type!r}; only the baseline is a LLaVA")
    if cfg.vision_feature_pool != 1:
        raise ValueError(f"to_llava needs vision_feature_pool 1, got {cfg.vision_feature_pool}: Llava feeds the whole patch grid")
    if cfg.vision_crops:
        raise ValueError(f"to_llava needs vision_crops 0, got {cfg.vision_crops}: Llava has no crop tokens")
    vocab = cfg.text_config.vocab_size
    image_id, grow = cfg.image_token_index, 0
    if not 0 <= image_id < vocab:
        if not add_image_token:
            raise ValueError(f"Llava embeds its image token, so image_token_index must be in 0..{vocab - 1}, got "
                             f"{image_id}; rebuild with an id inside the LM vocabulary or pass add_image_token=True")
        image_id, grow = vocab, 1
    tied = bool(getattr(cfg.text_config, "tie_word_embeddings", False))
    llava_cfg = LlavaConfig(
        vision_config=cfg.clip_config.vision_config.to_dict() | {"model_type": "clip_vision_model"},
        text_config=cfg.text_config.to_dict() | {"vocab_size": vocab + grow}, image_token_index=image_id,
        image_seq_length=cfg.num_patches, projector_hidden_act=cfg.projector_hidden_act,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        vision_feature_layer=cfg.vision_feature_layer, tie_word_embeddings=tied)
    llava = LlavaForConditionalGeneration(llava_cfg).to(model.dtype)
    # Same module layouts, so each part loads strictly: CLIP vision -> vision_tower, projector (linear_1, act,
    # linear_2) -> multi_modal_projector, the LM's decoder -> language_model, its head -> lm_head.
    lm = model.language_model
    decoder = lm.get_decoder().state_dict()
    embed_key = next(k for k, v in decoder.items() if v.shape[0] == vocab and k.endswith("embed_tokens.weight"))
    with torch.no_grad():
        llava.model.vision_tower.load_state_dict(model.clip.vision_model.state_dict())
        llava.model.multi_modal_projector.load_state_dict(model.projector.state_dict())
        if grow:
            decoder[embed_key] = torch.cat([decoder[embed_key], decoder[embed_key].new_zeros(grow, decoder[embed_key].shape[1])])
        llava.model.language_model.load_state_dict(decoder)
        if not tied:
            head = lm.get_output_embeddings().weight
            llava.lm_head.weight.copy_(torch.cat([head, head.new_zeros(grow, head.shape[1])]) if grow else head)
    if grow:
        llava.generation_config.suppress_tokens = [image_id]
    return llava.train(model.training)


__all__ = ["STAGE_GROUPS", "ModelLoadError", "build_tuna", "load_pretrained", "set_trainable", "stage_parameters", "to_llava"]
