"""Training data: LLaVA JSON records -> examples (token ids with masked labels, image, retrieved tags) -> batches.

The templates, prompt ids, tag tensors and padding are the model's processing
(:mod:`tuna.model.processing_tuna`), shared with evaluation and serving; this module holds what only
training does: tokenise and filter the records, add the reading conversations, check the images and
read them from disk into batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuna.errors import CorruptSample, TunaError
from tuna.formats import LlavaRecord
from tuna.model.processing_tuna import (
    IGNORE_INDEX,
    IMAGE,
    IMAGE_TOKEN_INDEX,
    TunaProcessor,
    tokenize_conversation,
    tokenize_plain,
)
from tuna.samples import decode_image, image_keys
from tuna.staging import staged_file


class DataError(TunaError, ValueError):
    """Training data that cannot be used as given."""


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
    longest: int = 0         # reading conversations: the longest one's tokens (what max_length must reach to keep all)


def prepare(records: Sequence[LlavaRecord], tokenizer: Any, stage: int, max_length: int, system: str,
            tags: dict[str, list[tuple[str, float]]] | None = None, num_tags: int = 5) -> Prepared:
    """Tokenise every record for ``stage``; truncate to ``max_length``; attach up to ``num_tags`` tags per image
    (``tags`` keyed as :func:`tuna.samples.image_keys` keys the records' images, as ``attach_tags`` returns them).

    Skipped (and counted by reason): text-only records (no ``image``: LLaVA-665K's ShareGPT part; our models take
    an image per example), records whose image token or every answer token falls past ``max_length``, and
    records whose image has no retrieved tags when tags are in use.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos token; training needs one to end answers")
    out, skipped = [], {}
    keys = image_keys(r.image for r in records if r.image is not None)
    for rec in records:
        if rec.image is None:
            skipped["text_only"] = skipped.get("text_only", 0) + 1
            continue
        ids, labels = tokenize_plain(rec, tokenizer) if stage == 1 else tokenize_conversation(rec, tokenizer, system)
        ids, labels = ids[:max_length], labels[:max_length]
        reason = None
        if IMAGE_TOKEN_INDEX not in ids:
            reason = "image_token_truncated"
        elif all(lab == IGNORE_INDEX for lab in labels):
            reason = "no_answer_within_max_length"
        elif tags is not None and keys[rec.image] not in tags:
            reason = "no_retrieved_tags"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        tag_list = [t for t, _ in tags[keys[rec.image]]][:num_tags] if tags is not None else []
        out.append(Example(rec.id, rec.image, ids, labels, tag_list))
    return Prepared(out, skipped)


def id_digest(key: str, row_id: str) -> int:
    """A 64-bit digest of ``key`` and a row id: the same number in every epoch, on every rank, whatever the order."""
    return int.from_bytes(hashlib.sha256(f"{key}:{row_id}".encode()).digest()[:8], "big")


def seeded_share(examples: Sequence[Example], share: float, key: str, what: str) -> set[str]:
    """The ids of a ``share`` of ``examples`` chosen by :func:`id_digest` of ``key`` and each id."""
    if not 0 <= share < 1:
        raise DataError(f"{what} share must be in [0, 1), got {share}")
    if share == 0:
        return set()
    return {ex.id for ex in examples if id_digest(key, ex.id) / 2 ** 64 < share}


def drop_tags(examples: Sequence[Example], share: float, seed: int) -> list[Example]:
    """``examples`` with the retrieved tags removed from a ``share`` of them, chosen by ``seed`` and each example's
    id: those train the image-only path, so the model learns to answer from what it sees when the tags say nothing."""
    picked = seeded_share(examples, share, str(seed), "tag dropout")
    return [dataclasses.replace(ex, tags=[]) if ex.id in picked else ex for ex in examples]


def drop_images(examples: Sequence[Example], share: float, seed: int, blank: Path) -> list[Example]:
    """``examples`` with the image replaced by ``blank`` (a grey image) in a ``share`` of those that carry tags,
    chosen by ``seed`` and each example's id, independently of :func:`drop_tags`: those train the tags-only path,
    so the model learns to read real retrieved tags where the image says nothing it knows (an unseen object)."""
    picked = seeded_share(examples, share, f"image:{seed}", "image dropout")
    return [dataclasses.replace(ex, image=blank) if ex.id in picked and ex.tags else ex for ex in examples]


def random_tag_rows(examples: Sequence[Example], share: float, seed: int, random_tags: dict[Path, list[str]]) -> list[Example]:
    """``examples`` with the retrieved tags of a ``share`` of the tagged ones replaced by random tags for their image
    (``random_tags``, as the ``random`` tag mode draws them), chosen by ``seed`` and each id: on those the answer
    follows the image and not tags that do not cohere, so the model learns to follow the tags where they agree
    among themselves (an unseen object's) rather than where the image backs one of them."""
    picked = seeded_share(examples, share, f"random:{seed}", "random tags")
    return [dataclasses.replace(ex, tags=random_tags[ex.image]) if ex.id in picked and ex.tags and ex.image in random_tags
            else ex for ex in examples]


def reading_examples(samples: Sequence[Any], images: Sequence[Path], tokenizer: Any, max_length: int,
                     system: str) -> Prepared:
    """Reading conversations (:class:`tuna.world.reading.ReadingSample`) as stage-2 examples: ``images[i]``
    (a blank image, or a scene whose true tags they replace), the sample's tags as the retrieved tags, one
    question and its answer (two for ATTRSEEK samples). Conversations longer than ``max_length`` are skipped and
    counted (``skipped["reading_too_long"]``; ``longest`` says the length that would keep them all)."""
    if len(images) != len(samples):
        raise DataError(f"reading_examples needs one image per sample, got {len(images)} for {len(samples)}")
    out, too_long, longest = [], 0, 0
    for n, (r, image) in enumerate(zip(samples, images)):
        turns = [{"from": "human", "value": f"{IMAGE}\n{r.question}"}, {"from": "gpt", "value": r.answer}]
        if r.follow_up:
            turns += [{"from": "human", "value": r.follow_up[0]}, {"from": "gpt", "value": r.follow_up[1]}]
        rec = LlavaRecord(f"reading-{n:06d}", image, turns)
        ids, labels = tokenize_conversation(rec, tokenizer, system)
        longest = max(longest, len(ids))
        if len(ids) <= max_length:
            out.append(Example(rec.id, image, ids, labels, list(r.tags)))
        else:
            too_long += 1
    return Prepared(out, {"reading_too_long": too_long} if too_long else {}, longest)


def write_blank_image(path: Path, size: int) -> Path:
    """A mid-grey ``size`` x ``size`` PNG at ``path`` (the image of text-only conversations); written once, atomically."""
    from PIL import Image

    if not path.is_file():
        with staged_file(path) as tmp:   # ranks may write it at once
            Image.new("RGB", (size, size), (128, 128, 128)).save(tmp, format="PNG")
    return path


class Collator(TunaProcessor):
    """Examples -> one padded batch of model inputs (right padding; tags padded to ``num_tags``); the images
    are read from the examples' files, or, once :attr:`vision` holds their encodings (tuna.train.vision_cache),
    taken from there as ``image_outputs``."""

    vision: dict[Path, tuple[torch.Tensor, torch.Tensor]] | None = None

    def read(self, images: Sequence[Path]) -> torch.Tensor:
        """(B, 3, S, S) pixel values of image files."""
        return self.pixel_values([decode_image(p.read_bytes() if p.is_file() else None, str(p)) for p in images])

    def images(self, examples: Sequence[Example]) -> torch.Tensor:
        return self.read([ex.image for ex in examples])

    def __call__(self, examples: Sequence[Example]) -> dict[str, Any]:
        ids, labels, tags = [ex.input_ids for ex in examples], [ex.labels for ex in examples], [ex.tags for ex in examples]
        if self.vision is None:
            return self.collate(ids, labels, self.images(examples), tags)
        from tuna.train.vision_cache import batch_outputs

        batch: dict[str, Any] = self.collate(ids, labels, None, tags)   # type: ignore[arg-type]
        del batch["pixel_values"]
        batch["image_outputs"] = batch_outputs(self.vision, [ex.image for ex in examples])
        return batch


def length_split(examples: Sequence[Example], buckets: int) -> list[list[Example]]:
    """``examples`` sorted by token count and cut into ``min(buckets, len(examples))`` runs so that the padded tokens
    (each run padded to its longest) are fewest: the sub-batches ``train.length_buckets`` runs one after the other.
    The count never depends on the lengths, so every rank runs as many forwards (ZeRO-3 gathers in each)."""
    order = sorted(examples, key=lambda ex: len(ex.input_ids))
    n = len(order)
    k = max(1, min(buckets, n))
    lengths = [len(ex.input_ids) for ex in order]
    # best[j][i]: fewest padded tokens of the first i examples in j runs; cut[j][i]: where the last run starts
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            for start in range(j - 1, i):
                cost = best[j - 1][start] + lengths[i - 1] * (i - start)
                if cost < best[j][i]:
                    best[j][i], cut[j][i] = cost, start
    parts, end = [], n
    for j in range(k, 0, -1):
        start = cut[j][end]
        parts.append(order[start:end])
        end = start
    return parts[::-1]


def padding_ratio(batches: Sequence[Sequence[Example]], buckets: int = 1) -> float:
    """Text positions computed per real token over ``batches``, each cut by :func:`length_split` into ``buckets`` runs
    and each run padded to its longest (1.0 = no padding)."""
    real = sum(len(ex.input_ids) for b in batches for ex in b)
    padded = sum(len(run) * len(run[-1].input_ids) for b in batches for run in length_split(b, buckets))
    return padded / max(1, real)


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


__all__ = ["Collator", "DataError", "Example", "Prepared", "check_images", "drop_images", "drop_tags", "id_digest", "length_split", "padding_ratio", "prepare",
           "random_tag_rows", "reading_examples", "seeded_share", "write_blank_image"]
