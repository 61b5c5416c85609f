"""Processing for TUNA: the chat template, prompt ids, image preprocessing and tag tensors.

What train, eval and serve all share (the transformers ``processing_llava.py`` habit), so a question is
asked the way training taught and tags reach the model the way it was trained on them:

- Templates follow LLaVA. Stage 1 uses ``plain`` (``<image>`` then the caption, the loss on the caption
  only); stage 2 uses Vicuna v1 (``{system} USER: {question} ASSISTANT: {answer}</s>USER: ...``, the loss
  on the assistant turns and their ``</s>`` only). ``<image>`` becomes the single id ``IMAGE_TOKEN_INDEX``;
  the model replaces it with visual tokens and the tag block. :func:`conversation_prompt_ids` builds the
  same prefix for generation.
- :class:`TunaProcessor`: the LM tokenizer, the CLIP image processor and the CLIP tokenizer of a model
  folder. Images -> ``pixel_values`` (B, 3, S, S); ranked tag strings -> the tag tensors the model takes
  (LM tokens (B, k, T), CLIP tokens (B, k, ``CLIP_TAG_TOKENS``), masks); id rows -> padded batches.

Records are LLaVA conversations: anything with ``id`` and ``conversations`` (``[{"from": "human", "value":
...}, {"from": "gpt", "value": ...}, ...]``), e.g. :class:`tuna.formats.LlavaRecord`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from tuna.errors import TunaError
from tuna.model.configuration_tuna import IMAGE_TOKEN_INDEX
from tuna.model.modeling_tuna import IGNORE_INDEX

IMAGE = "<image>"
CLIP_TAG_TOKENS = 16  # CLIP tokens per tag (start/end included); captions-as-tags are cut here


class ProcessingError(TunaError, ValueError):
    """Text, tokenizers or tags that cannot be turned into model inputs as given."""


class Conversation(Protocol):
    """A LLaVA conversation record (``tuna.formats.LlavaRecord`` is one)."""

    id: str
    conversations: Sequence[Mapping[str, str]]


# ------------------------------------------------------------------------------------------ templates


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with ``<image>`` as IMAGE_TOKEN_INDEX; no special tokens added."""
    out: list[int] = []
    for n, piece in enumerate(text.split(IMAGE)):
        if n:
            out.append(IMAGE_TOKEN_INDEX)
        if piece:
            out.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return out


def _bos(tokenizer: Any) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def prompt_text(system: str, question: str) -> str:
    """The Vicuna v1 text of one question, up to and including ``ASSISTANT:`` (what generation continues)."""
    return f"{system} USER: {question} ASSISTANT:" if system else f"USER: {question} ASSISTANT:"


def _question_ids(tokenizer: Any, system: str, n: int, question: str) -> list[int]:
    """Turn ``n``'s question up to ``ASSISTANT:`` (the system prompt opens the first turn only)."""
    return encode(tokenizer, prompt_text(system, question) if n == 0 else f"USER: {question} ASSISTANT:")


def _answer_ids(tokenizer: Any, answer: str) -> list[int]:
    return encode(tokenizer, " " + answer.strip()) + [tokenizer.eos_token_id]


def tokenize_plain(record: Conversation, tokenizer: Any) -> tuple[list[int], list[int]]:
    """LLaVA's ``plain`` template (stage 1): ``<s><image>{caption}</s>``, loss on the caption and ``</s>``."""
    caption = record.conversations[1]["value"].strip()
    head = _bos(tokenizer) + [IMAGE_TOKEN_INDEX]
    body = encode(tokenizer, caption.replace(IMAGE, "")) + [tokenizer.eos_token_id]
    return head + body, [IGNORE_INDEX] * len(head) + body


def _turns(record: Conversation) -> list[tuple[str, str]]:
    conv = record.conversations
    return [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]


def tokenize_conversation(record: Conversation, tokenizer: Any, system: str) -> tuple[list[int], list[int]]:
    """Vicuna v1 (stage 2): labels only on the assistant answers and their ``</s>``; human turns masked."""
    ids, labels = list(_bos(tokenizer)), [IGNORE_INDEX] * len(_bos(tokenizer))
    for n, (question, answer) in enumerate(_turns(record)):
        prompt = _question_ids(tokenizer, system, n, question)
        reply = _answer_ids(tokenizer, answer)
        if IMAGE_TOKEN_INDEX in reply:
            raise ProcessingError(f"sample {record.id}: an assistant turn holds {IMAGE}; only human turns may")
        ids += prompt + reply
        labels += [IGNORE_INDEX] * len(prompt) + reply
    return ids, labels


def conversation_prompt_ids(tokenizer: Any, system: str, turns: Sequence[tuple[str, str]], question: str) -> list[int]:
    """Ids for generation: ``<s>``, the earlier ``turns`` [(question, answer), ...] exactly as training
    tokenises them, then ``question`` up to ``ASSISTANT:``. ``<image>`` is put in the first question when absent."""
    turns = [(q, a) for q, a in turns]
    if turns and IMAGE not in turns[0][0]:
        turns[0] = (f"{IMAGE}\n{turns[0][0]}", turns[0][1])
    elif not turns and IMAGE not in question:
        question = f"{IMAGE}\n{question}"
    ids = list(_bos(tokenizer))
    for n, (q, a) in enumerate(turns):
        ids += _question_ids(tokenizer, system, n, q) + _answer_ids(tokenizer, a)
    return ids + _question_ids(tokenizer, system, len(turns), question)


def prompt_ids(tokenizer: Any, system: str, question: str) -> list[int]:
    """Ids for generation of a first question: ``<s>`` + its v1 prompt (``<image>`` prepended when absent)."""
    return conversation_prompt_ids(tokenizer, system, [], question)


def pad_with_unk(tokenizer: Any) -> Any:
    """``tokenizer`` with a padding token: Vicuna/Llama ship none; pad with unk (or eos), never trained on
    (labels -100) and masked out of attention."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def silent_token_ids(tokenizer: Any) -> list[int]:
    """Special token ids an answer never holds: ``<s>``, ``<unk>`` and padding (not the end token)."""
    t = tokenizer
    return sorted({i for i in (t.bos_token_id, t.unk_token_id, t.pad_token_id) if i is not None and i != t.eos_token_id})


# ------------------------------------------------------------------------------------------ tensors


class TunaProcessor:
    """The tokenizers and image processor of a TUNA model: images, prompts and tags -> model tensors.

    ``tokenizer`` is the LM's; ``image_processor`` the CLIP image processor (None when only text and tags
    are processed); ``clip_tokenizer`` encodes tags for the tag encoder and tuner (needed when
    ``use_tags``). Tags are padded to ``num_tags`` per image and cut to ``max_tag_tokens`` LM tokens.
    """

    def __init__(self, tokenizer: Any, image_processor: Any | None, clip_tokenizer: Any | None, num_tags: int,
                 max_tag_tokens: int, use_tags: bool) -> None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ProcessingError("the tokenizer has neither a pad nor an eos token; set one before training")
        if use_tags and clip_tokenizer is None:
            raise ProcessingError("tags are in use but no CLIP tokenizer was given to encode them")
        self.tokenizer, self.image_processor, self.clip_tokenizer = tokenizer, image_processor, clip_tokenizer
        self.pad, self.k, self.max_tag_tokens, self.use_tags = pad, num_tags, max_tag_tokens, use_tags
        self._tag_cache: dict[str, list[int]] = {}
        self._clip_tag_cache: dict[str, tuple[list[int], list[int]]] = {}

    @classmethod
    def from_pretrained(cls, folder: str | Path, images: bool = True) -> TunaProcessor:
        """The processor saved with a model by `tuna train` (``tokenizer.json``, ``preprocessor_config.json``,
        ``clip_tokenizer/`` and ``config.json`` for the tag settings); ``images=False`` skips the image processor.
        A folder without ``config.json`` gives a processor of text and images only (no tags)."""
        from transformers import AutoImageProcessor, AutoTokenizer

        from tuna.model.configuration_tuna import TunaConfig

        folder = Path(folder)
        tokenizer = pad_with_unk(AutoTokenizer.from_pretrained(str(folder)))
        processor = AutoImageProcessor.from_pretrained(str(folder)) if images else None
        if not (folder / "config.json").is_file():
            return cls(tokenizer, processor, None, num_tags=0, max_tag_tokens=0, use_tags=False)
        cfg = TunaConfig.from_pretrained(str(folder))
        clip_dir = folder / "clip_tokenizer"
        clip_tokenizer = AutoTokenizer.from_pretrained(str(clip_dir)) if clip_dir.is_dir() else None
        return cls(tokenizer, processor, clip_tokenizer, cfg.num_tags, cfg.max_tag_tokens, cfg.tag_mode != "none")

    def pixel_values(self, images: Sequence[Any], return_tensors: str = "pt") -> Any:
        """PIL images -> (B, 3, S, S) pixel values (a tensor, or numpy with ``return_tensors="np"``)."""
        if self.image_processor is None:
            raise ProcessingError("this processor was loaded without its image processor (images=False)")
        return self.image_processor(images=list(images), return_tensors=return_tensors)["pixel_values"]

    def _lm_tag(self, tag: str) -> list[int]:
        if tag not in self._tag_cache:
            self._tag_cache[tag] = self.tokenizer(tag, add_special_tokens=False)["input_ids"][: self.max_tag_tokens]
        return self._tag_cache[tag]

    def _clip_tags(self, tags: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """CLIP ids and masks of ``tags``, each padded/cut to CLIP_TAG_TOKENS; tokenised once per distinct tag (a
        datastore's values repeat: a served request's tags were most of a retrieval step's tokenizer time)."""
        new = [t for t in dict.fromkeys(tags) if t not in self._clip_tag_cache]
        if new:
            enc = self.clip_tokenizer(new, padding="max_length", truncation=True, max_length=CLIP_TAG_TOKENS)
            self._clip_tag_cache.update(zip(new, zip(enc["input_ids"], enc["attention_mask"])))
        rows = [self._clip_tag_cache[t] for t in tags]
        return [r[0] for r in rows], [r[1] for r in rows]

    def tag_tensors(self, tag_lists: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """LM- and CLIP-tokenised tags (B, k, T) / (B, k, Tc) with token and tag masks."""
        b, k = len(tag_lists), self.k
        lm = [[self._lm_tag(t) for t in tags[:k]] for tags in tag_lists]
        t_len = max([len(x) for row in lm for x in row] + [1])
        ids = torch.zeros(b, k, t_len, dtype=torch.long)
        att = torch.zeros(b, k, t_len, dtype=torch.long)
        tag_mask = torch.zeros(b, k, dtype=torch.bool)
        flat = []
        for i, row in enumerate(lm):
            for j, toks in enumerate(row):
                if toks:
                    ids[i, j, :len(toks)] = torch.tensor(toks)
                    att[i, j, :len(toks)] = 1
                    tag_mask[i, j] = True
            flat += list(tag_lists[i][:k]) + [""] * (k - len(row))
        clip_ids, clip_mask = self._clip_tags(flat)
        return {"tag_input_ids": ids, "tag_attention_mask": att, "tag_mask": tag_mask,
                "tag_clip_input_ids": torch.tensor(clip_ids, dtype=torch.long).reshape(b, k, -1),
                "tag_clip_attention_mask": torch.tensor(clip_mask, dtype=torch.long).reshape(b, k, -1)}

    def pad_right(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Id rows -> (B, L) ids right-padded with the pad id, and the (B, L) attention mask (training, retrieval)."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.as_tensor(r, dtype=torch.long), 1
        return ids, mask

    def pad_left(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Id rows -> (B, L) ids left-padded (as ``generate`` expects) and the (B, L) attention mask."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r):], mask[i, length - len(r):] = torch.as_tensor(r, dtype=torch.long), 1
        return ids, mask

    def collate(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pixel_values: torch.Tensor,
                tags: Sequence[Sequence[str]]) -> dict[str, torch.Tensor]:
        """One training batch: ids and labels right-padded (labels with IGNORE_INDEX), ``pixel_values``
        (B, 3, S, S) and, when tags are in use, the tag tensors of the ranked ``tags`` per example."""
        ids, mask = self.pad_right(input_ids)
        lab = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(labels):
            lab[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
        batch = {"input_ids": ids, "labels": lab, "attention_mask": mask, "pixel_values": pixel_values}
        if self.use_tags:
            batch.update(self.tag_tensors(tags))
        return batch


__all__ = ["CLIP_TAG_TOKENS", "IGNORE_INDEX", "IMAGE", "IMAGE_TOKEN_INDEX", "Conversation", "ProcessingError",
           "TunaProcessor", "conversation_prompt_ids", "encode", "pad_with_unk", "prompt_ids", "prompt_text",
           "silent_token_ids", "tokenize_conversation", "tokenize_plain"]
