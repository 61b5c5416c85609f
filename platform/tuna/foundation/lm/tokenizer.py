"""The language model's tokenizer: byte-level BPE trained offline on the world's training-side text.

Byte-level means every string encodes (no ``<unk>`` ever appears) and decodes back exactly. Like
Llama's tokenizer, a space is prepended to the text before splitting and stripped again on decode,
so a word is one and the same token sequence at the start of a text and inside a sentence (the tag
``"zedul"`` and the answer ``"... is a zedul"`` share ``Ġzedul``). The
trained ``tokenizers.Tokenizer`` is wrapped as a ``PreTrainedTokenizerFast`` with Llama's special
tokens (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3): ``<s>`` is prepended on encode, documents end
with ``</s>`` when packed for pre-training. It carries LLaVA-1.5's conversation template (Vicuna v1) as
its chat template, so stage 2 formats turns the same way for the tiny LM and for Vicuna.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD]  # ids 0..3, Llama's order for the first three

VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
# LLaVA-1.5's conv_vicuna_v1: "<s>SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:"
VICUNA_V1_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' -%}{%- endif -%}"
    "{{ bos_token + system + ' ' }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ 'USER: ' + m['content'] + ' ' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + m['content'] + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most ``vocab_size`` entries (specials included) on ``texts``.

    ``max_length`` becomes ``model_max_length``. Padding is on the right (training batches); pass
    ``padding_side="left"`` per call when batching prompts for generation.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])  # drop the prepended space
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
                                   model_max_length=max_length, padding_side="right", chat_template=VICUNA_V1_TEMPLATE,
                                   model_input_names=["input_ids", "attention_mask"],
                                   clean_up_tokenization_spaces=False)


def ensure_pad_and_template(tokenizer: Any) -> Any:
    """Give a loaded tokenizer what the platform relies on: a pad token and a chat template.

    Llama/Vicuna tokenizers ship without a pad token; like LLaVA, pad with ``<unk>`` (else ``</s>``).
    A tokenizer without a chat template gets Vicuna v1 (LLaVA-1.5's conversation format).
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = VICUNA_V1_TEMPLATE
    return tokenizer


def tokens_per_name(tokenizer: Any, names: Sequence[str]) -> dict[str, float]:
    """Mean and max tokens per class name, as a word inside a sentence (``"a zedul"`` minus ``"a"``).

    Measured inside a sentence so that tokenizers without a prepended space (GPT-2 style) are not
    charged for the first-word form; for this module's tokenizer both forms are the same.
    """
    if not names:
        return {"mean": 0.0, "max": 0, "n": 0}
    base = len(tokenizer.encode("a", add_special_tokens=False))
    counts = [len(tokenizer.encode("a " + n, add_special_tokens=False)) - base for n in names]
    return {"mean": round(sum(counts) / len(counts), 3), "max": max(counts), "n": len(counts)}
