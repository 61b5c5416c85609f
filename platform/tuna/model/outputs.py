"""What :class:`~tuna.model.modeling_tuna.TunaForConditionalGeneration` returns: its forward output and the merged
LM inputs of ``prepare_multimodal_inputs`` (L' = merged length, V = vocabulary, P visual tokens, k tags, D the LM width)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput


@dataclass
class TunaCausalLMOutput(ModelOutput):
    """Output of :meth:`TunaForConditionalGeneration.forward` (L' = merged length, V = vocabulary)."""

    loss: torch.Tensor | None = None                      # () mean next-token loss over labelled positions
    logits: torch.Tensor | None = None                    # (B, L', V)
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    tag_weights: torch.Tensor | None = None               # (B, k) softmax per image, 0 on absent tags
    image_hidden_states: torch.Tensor | None = None       # (B, P, D) visual tokens after the connector
    tag_hidden_states: torch.Tensor | None = None         # (B, k, D) visual-tag embeddings before weighting
    attention_mask: torch.Tensor | None = None            # (B, L') merged mask the LM saw
    labels: torch.Tensor | None = None                    # (B, L') merged labels (-100 on visual/tag positions)


@dataclass
class TunaMergedInputs:
    """What the LM reads: the merged sequence and its provenance (from ``prepare_multimodal_inputs``)."""

    inputs_embeds: torch.Tensor                            # (B, L', D), L' = L - 1 + P + k * (1 + T)
    attention_mask: torch.Tensor                           # (B, L') long
    position_ids: torch.Tensor                             # (B, L') positions counting attended tokens only
    labels: torch.Tensor | None                            # (B, L') or None
    image_hidden_states: torch.Tensor                      # (B, P, D)
    tag_weights: torch.Tensor | None                       # (B, k), None in tag_mode "none"
    tag_hidden_states: torch.Tensor | None                 # (B, k, D), None in tag_mode "none"


__all__ = ["TunaCausalLMOutput", "TunaMergedInputs"]
