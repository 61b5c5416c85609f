"""Training data: LLaVA JSON records -> token ids with masked labels, images and retrieved tags -> batches.

Templates follow LLaVA: stage 1 uses ``plain`` (``<image>`` then the caption, the loss on the caption
only); stage 2 uses Vicuna v1 (``{system} USER: {question} ASSISTANT: {answer}</s>USER: ...``, the
loss on the assistant turns and their ``</s>`` only). ``<image>`` becomes the single id
``IMAGE_TOKEN_INDEX``; the model replaces it with visual tokens and the tag block. :func:`prompt_ids`
builds the same prefix for generation, so evaluation and serving ask the way training taught.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuna.errors import CorruptSample, TunaError
from tuna.formats import LlavaRecord
from tuna.model.configuration_tuna import IMAGE_TOKEN_INDEX
from tuna.samples import decode_image

IGNORE_INDEX = -100
IMAGE = "<image>"
CLIP_TAG_TOKENS = 16  # CLIP tokens per tag (start/end included); captions-as-tags are cut here


class DataError(TunaError, ValueError):
    """Training data that cannot be used as given."""


def _encode(tokenizer: Any, text: str) -> list[int]:
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


def tokenize_plain(record: LlavaRecord, tokenizer: Any) -> tuple[list[int], list[int]]:
    """LLaVA's ``plain`` template (stage 1): ``<s><image>{caption}</s>``, loss on the caption and ``</s>``."""
    caption = record.conversations[1]["value"].strip()
    head = _bos(tokenizer) + [IMAGE_TOKEN_INDEX]
    body = _encode(tokenizer, caption.replace(IMAGE, "")) + [tokenizer.eos_token_id]
    return head + body, [IGNORE_INDEX] * len(head) + body


def _turns(record: LlavaRecord) -> list[tuple[str, str]]:
    conv = record.conversations
    return [(conv[i]["value"], conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]


def prompt_text(system: str, question: str) -> str:
    """The Vicuna v1 text of one question, up to and including ``ASSISTANT:`` (what generation continues)."""
    return f"{system} USER: {question} ASSISTANT:" if system else f"USER: {question} ASSISTANT:"


def tokenize_conversation(record: LlavaRecord, tokenizer: Any, system: str) -> tuple[list[int], list[int]]:
    """Vicuna v1 (stage 2): labels only on the assistant answers and their ``</s>``; human turns masked."""
    ids, labels = list(_bos(tokenizer)), [IGNORE_INDEX] * len(_bos(tokenizer))
    for n, (question, answer) in enumerate(_turns(record)):
        prompt = _encode(tokenizer, prompt_text(system, question) if n == 0 else f"USER: {question} ASSISTANT:")
        reply = _encode(tokenizer, " " + answer.strip()) + [tokenizer.eos_token_id]
        if IMAGE_TOKEN_INDEX in reply:
            raise DataError(f"sample {record.id}: an assistant turn holds {IMAGE}; only human turns may")
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
        ids += _encode(tokenizer, prompt_text(system, q) if n == 0 else f"USER: {q} ASSISTANT:")
        ids += _encode(tokenizer, " " + a.strip()) + [tokenizer.eos_token_id]
    return ids + _encode(tokenizer, prompt_text(system, question) if not turns else f"USER: {question} ASSISTANT:")


def prompt_ids(tokenizer: Any, system: str, question: str) -> list[int]:
    """Ids for generation of a first question: ``<s>`` + its v1 prompt (``<image>`` prepended when absent)."""
    return conversation_prompt_ids(tokenizer, system, [], question)


@dataclass(frozen=True)
class Example:
    id: str
    image: Path
    input_ids: list[int]
    labels: list[int]
    tags: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    examples: list[Example]
    skipped: dict[str, int]  # reason -> count


def prepare(records: Sequence[LlavaRecord], tokenizer: Any, stage: int, max_length: int, system: str,
            tags: dict[str, list[tuple[str, float]]] | None = None, num_tags: int = 5) -> Prepared:
    """Tokenise every record for ``stage``; truncate to ``max_length``; attach up to ``num_tags`` tags per image.

    Skipped (and counted by reason): records whose image token or every answer token falls past
    ``max_length``, and records whose image has no retrieved tags when tags are in use.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos token; training needs one to end answers")
    out, skipped = [], {}
    for rec in records:
        ids, labels = tokenize_plain(rec, tokenizer) if stage == 1 else tokenize_conversation(rec, tokenizer, system)
        ids, labels = ids[:max_length], labels[:max_length]
        reason = None
        if IMAGE_TOKEN_INDEX not in ids:
            reason = "image_token_truncated"
        elif all(lab == IGNORE_INDEX for lab in labels):
            reason = "no_answer_within_max_length"
        elif tags is not None and rec.image.name not in tags:
            reason = "no_retrieved_tags"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        tag_list = [t for t, _ in tags[rec.image.name]][:num_tags] if tags is not None else []
        out.append(Example(rec.id, rec.image, ids, labels, tag_list))
    return Prepared(out, skipped)


def reading_examples(samples: Sequence[Any], images: Sequence[Path], tokenizer: Any, max_length: int,
                     system: str) -> list[Example]:
    """Reading conversations (:class:`tuna.world.reading.ReadingSample`) as stage-2 examples: ``images[i]``
    (a blank image, or a scene whose true tags they replace), the sample's tags as the retrieved tags, one
    question and its answer. Conversations longer than ``max_length`` are dropped."""
    if len(images) != len(samples):
        raise DataError(f"reading_examples needs one image per sample, got {len(images)} for {len(samples)}")
    out = []
    for n, (r, image) in enumerate(zip(samples, images)):
        rec = LlavaRecord(f"reading-{n:06d}", image, [{"from": "human", "value": f"{IMAGE}\n{r.question}"},
                                                      {"from": "gpt", "value": r.answer}])
        ids, labels = tokenize_conversation(rec, tokenizer, system)
        if len(ids) <= max_length:
            out.append(Example(rec.id, image, ids, labels, list(r.tags)))
    return out


def write_blank_image(path: Path, size: int) -> Path:
    """A mid-grey ``size`` x ``size`` PNG at ``path`` (the image of text-only conversations); written once, atomically."""
    from PIL import Image

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # ranks may write it at once
        Image.new("RGB", (size, size), (128, 128, 128)).save(tmp, format="PNG")
        tmp.replace(path)
    return path


class Collator:
    """Examples -> one padded batch of model inputs (right padding; tags padded to ``num_tags``)."""

    def __init__(self, tokenizer: Any, image_processor: Any, clip_tokenizer: Any | None, num_tags: int,
                 max_tag_tokens: int, use_tags: bool) -> None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise DataError("the tokenizer has neither a pad nor an eos token; set one before training")
        if use_tags and clip_tokenizer is None:
            raise DataError("tags are in use but no CLIP tokenizer was given to encode them")
        self.tokenizer, self.processor, self.clip_tokenizer = tokenizer, image_processor, clip_tokenizer
        self.pad, self.k, self.max_tag_tokens, self.use_tags = pad, num_tags, max_tag_tokens, use_tags
        self._tag_cache: dict[str, list[int]] = {}

    def images(self, examples: Sequence[Example]) -> torch.Tensor:
        pics = []
        for ex in examples:
            data = ex.image.read_bytes() if ex.image.is_file() else None
            pics.append(decode_image(data, str(ex.image)))
        return self.processor(images=pics, return_tensors="pt")["pixel_values"]

    def _lm_tag(self, tag: str) -> list[int]:
        if tag not in self._tag_cache:
            self._tag_cache[tag] = self.tokenizer(tag, add_special_tokens=False)["input_ids"][: self.max_tag_tokens]
        return self._tag_cache[tag]

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
        clip = self.clip_tokenizer(flat, padding="max_length", truncation=True, max_length=CLIP_TAG_TOKENS,
                                   return_tensors="pt")
        return {"tag_input_ids": ids, "tag_attention_mask": att, "tag_mask": tag_mask,
                "tag_clip_input_ids": clip["input_ids"].reshape(b, k, -1),
                "tag_clip_attention_mask": clip["attention_mask"].reshape(b, k, -1)}

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        length = max(len(ex.input_ids) for ex in examples)
        ids = torch.full((len(examples), length), self.pad, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        for i, ex in enumerate(examples):
            n = len(ex.input_ids)
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(ex.input_ids), torch.tensor(ex.labels), 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": self.images(examples)}
        if self.use_tags:
            batch.update(self.tag_tensors([ex.tags for ex in examples]))
        return batch


def check_images(examples: Sequence[Example]) -> tuple[list[Example], list[CorruptSample]]:
    """Split examples into those whose image decodes and the rejects (key + reason), before training starts."""
    good, bad = [], []
    for ex in examples:
        try:
            decode_image(ex.image.read_bytes() if ex.image.is_file() else None, str(ex.image))
            good.append(ex)
        except CorruptSample as err:
            bad.append(err)
    return good, bad


__all__ = ["IGNORE_INDEX", "Collator", "DataError", "Example", "Prepared", "check_images", "conversation_prompt_ids", "prepare",
           "prompt_ids", "prompt_text", "reading_examples", "tokenize_conversation", "tokenize_plain", "write_blank_image"]
