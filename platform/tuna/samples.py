"""Per-sample validation shared by batch jobs: decode or reject one sample, and keep a quarantine list.

Batch jobs never stop on a bad sample: they skip it, count it and record the key and the reason in
``quarantine.jsonl`` next to their output, then say how many were skipped.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from tuna.errors import CorruptSample
from tuna.formats import WebSample

MAX_IMAGE_PIXELS = 64_000_000


def image_keys(images: Iterable[Path]) -> dict[Path, str]:
    """A key per image file that names it uniquely in the set: the file name when every name is unique (one
    folder, as the world and COCO have), else the path under the images' common folder (LLaVA-665K's
    ``coco/``, ``gqa/``, ``vg/`` roots hold files of the same name)."""
    paths = list(dict.fromkeys(images))
    if len({p.name for p in paths}) == len(paths):
        return {p: p.name for p in paths}
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return {p: p.relative_to(root).as_posix() for p in paths}


def decode_image(data: bytes | None, key: str) -> Image.Image:
    """RGB image from encoded bytes; raises CorruptSample naming the key for missing, truncated or non-image bytes."""
    if not data:
        raise CorruptSample(key, "no image bytes", "no_image")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise CorruptSample(key, f"image is {img.width}x{img.height}, over the {MAX_IMAGE_PIXELS} pixel limit", "image_too_large")
        img.load()  # forces a full decode: truncated files fail here, not later
        return img.convert("RGB")
    except CorruptSample:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptSample(key, f"image does not decode ({type(err).__name__}: {err})", "bad_image") from None


def caption_text(sample: WebSample, max_chars: int) -> str:
    """The caption of a web sample, rejected when missing, empty, not UTF-8 or longer than ``max_chars``."""
    text = sample.text()
    if len(text) > max_chars:
        raise CorruptSample(sample.key, f"caption is {len(text)} characters, over the {max_chars} limit (mine.max_caption_chars)", "long_caption")
    return text


class Quarantine:
    """Collects rejected samples; :meth:`write` saves them as JSON lines (key, source, kind, reason)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def add(self, err: CorruptSample, source: str = "") -> None:
        self.rows.append({"key": err.key, "source": source, "kind": err.kind, "reason": err.reason})

    def __len__(self) -> int:
        return len(self.rows)

    def reasons(self) -> dict[str, int]:
        """Count per kind (bad_image, empty_caption, long_caption, ...)."""
        return dict(Counter(r["kind"] for r in self.rows))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows), encoding="utf-8")

    def summary(self, total: int, what: str = "samples") -> str:
        if not self.rows:
            return f"{total} {what}, none skipped"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.reasons().items()))
        return f"{total} {what}, {len(self.rows)} skipped ({kinds}); see quarantine.jsonl"
