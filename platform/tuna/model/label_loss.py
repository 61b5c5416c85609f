"""Training loss with the LM head applied at the labelled positions only.

A causal LM's forward projects every position onto the vocabulary, but the loss reads only the positions whose next
token is labelled: the answers (about 13% of a stage-2 conversation's tokens on mini), never the visual tokens, the
tag block, the prompts or the padding. For LMs whose head is one plain linear map with unscaled logits (the
Llama family LLaVA and TUNA build on) the same mean next-token cross-entropy is computed from the decoder's hidden
states at those positions alone; other LMs return None and keep their own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # label of positions that carry no loss (visual tokens, tag block, prompts, padding)
# causal LMs whose forward is base model -> linear head -> (unscaled, uncapped) logits -> ForCausalLMLoss
PLAIN_HEADS = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"})


def label_position_loss(lm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor | None:
    """The mean next-token loss of ``lm`` over the positions ``labels`` (B, L) marks (``IGNORE_INDEX`` elsewhere),
    equal to ``lm(inputs_embeds=..., labels=labels).loss``; None when ``lm`` is not a :data:`PLAIN_HEADS` model."""
    if type(lm).__name__ not in PLAIN_HEADS:
        return None
    hidden = lm.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).last_hidden_state                  # (B, L, D)
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])                 # (n, V): the labelled positions only
    return F.cross_entropy(logits.float(), targets[keep])


__all__ = ["IGNORE_INDEX", "PLAIN_HEADS", "label_position_loss"]
