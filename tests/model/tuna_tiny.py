"""Tiny CLIP + Llama builders and random TUNA batches for the model tests (CLIP width 32, 2 layers, 32 px, 8 px patches)."""

from __future__ import annotations

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from tuna.model import TunaForConditionalGeneration

LM_VOCAB = 100
CLIP_VOCAB = 50
CLIP_PAD, CLIP_BOS, CLIP_EOS = 0, 48, 49   # inside the CLIP vocabulary (eos != 2: CLIP's legacy argmax pooling)
K, T, TC = 3, 4, 6                          # tags per image, LM tokens per tag, CLIP tokens per tag


def tiny_clip() -> CLIPModel:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    text = CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=16, pad_token_id=CLIP_PAD,
                          bos_token_id=CLIP_BOS, eos_token_id=CLIP_EOS, projection_dim=16)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))


def tiny_lm(tie: bool = True) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=LM_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie))


def make_batch(model: TunaForConditionalGeneration, b: int = 2, length: int = 10, where: int = 3,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs: one `<image>` at ``where``, k tags (row 0: tag 1 has 2 real tokens; row 1: tag 2 absent)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, LM_VOCAB - 2, (b, length), generator=g)
    ids[:, where] = model.config.image_token_index
    k = model.config.num_tags
    tag_ids = torch.randint(3, LM_VOCAB - 2, (b, k, T), generator=g)
    tag_att = torch.ones(b, k, T, dtype=torch.long)
    tag_att[0, 1, 2:] = 0
    tag_mask = torch.ones(b, k, dtype=torch.bool)
    tag_mask[1 % b, k - 1] = False
    clip_ids = torch.randint(1, CLIP_VOCAB - 2, (b, k, TC), generator=g)
    clip_ids[..., 0], clip_ids[..., -1] = CLIP_BOS, CLIP_EOS
    return {"input_ids": ids, "pixel_values": torch.randn(b, 3, 32, 32, generator=g),
            "tag_input_ids": tag_ids, "tag_attention_mask": tag_att, "tag_mask": tag_mask,
            "tag_clip_input_ids": clip_ids}
