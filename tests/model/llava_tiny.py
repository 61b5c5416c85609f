"""Tiny random LLaVA-1.5-format checkpoints for the checkpoint tests: a LlavaForConditionalGeneration whose vision
tower matches tuna_tiny's CLIP (width 32, 2 layers, 32 px, 8 px patches) and a tiny Llama, saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from tuna_tiny import LM_VOCAB, tiny_clip, tiny_lm

LLAVA_IMAGE_TOKEN = LM_VOCAB - 1   # llava-hf's `<image>` is an id inside the vocabulary (32000 of 32064)


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    """A random LLaVA-1.5-shaped model: CLIP vision tower, mlp2x_gelu projector, Llama LM (untied head)."""
    torch.manual_seed(seed)
    vision = tiny_clip().config.vision_config.to_dict() | {"model_type": "clip_vision_model"}
    config = LlavaConfig(vision_config=vision, text_config=tiny_lm(tie=False).config.to_dict(),
                         image_token_index=LLAVA_IMAGE_TOKEN, projector_hidden_act="gelu",
                         vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False)
    return LlavaForConditionalGeneration(config).eval()


def save_pair(root: Path, seed: int = 0) -> tuple[Path, Path, LlavaForConditionalGeneration]:
    """Save a tiny LLaVA and a tiny full CLIP under ``root``; returns (llava folder, clip folder, the LLaVA)."""
    llava = tiny_llava(seed)
    llava.save_pretrained(root / "llava")
    torch.manual_seed(seed + 1)
    tiny_clip().save_pretrained(root / "clip")
    return root / "llava", root / "clip", llava
