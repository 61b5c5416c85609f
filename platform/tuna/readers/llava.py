"""LLaVA conversation JSON: the pretrain set (LCS-558K, ``blip_laion_cc_sbu_558k.json``) and the instruction mix
(``llava_v1_5_mix665k.json``), as haotian-liu/LLaVA's docs/Data.md and train.py read them.

A file is one JSON list of ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}, ...]}``. ``id`` may be
a string or an int (665K mixes both). ``image`` is relative to the image folder LLaVA's ``--image_folder`` names: for
558K a path under its ``images/`` (``00453/004539375.jpg``), for 665K a path under ``playground/data`` that starts with
its own root (``coco/train2017/...``, ``gqa/images/...``, ``ocr_vqa/images/...``, ``textvqa/train_images/...``,
``vg/VG_100K/...``). Samples without ``image`` are text-only (665K's ShareGPT part): they are kept, with
``image=None``, and the training step skips and counts them (``text_only``; our models take an image per example).
Conversations may run several turns; turns alternate human/gpt starting with human, and an image sample's first human
turn carries ``<image>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tuna.errors import DataFormatError
from tuna.readers.jsonio import iter_json_array

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class LlavaRecord:
    """One LLaVA sample: an image path (absolute; None for a text-only sample) and alternating human/gpt turns."""

    id: str
    image: Path | None
    conversations: list[dict[str, str]]
    line: int = field(default=0, compare=False)   # where the sample starts in its file (for messages)


def image_roots(path: Path, image_folder: Path | Sequence[Path] | None) -> list[Path]:
    """The folders ``image`` fields resolve against: the given ones, else ``images/`` beside the JSON file."""
    if image_folder is None:
        return [Path(path).parent / "images"]
    if isinstance(image_folder, (str, Path)):
        return [Path(image_folder)]
    return [Path(p) for p in image_folder]


def resolve_image(name: str, roots: Sequence[Path]) -> Path:
    """``name`` under the first root that holds it (the first root when none does, so the miss names a real place)."""
    for root in roots:
        candidate = root / name
        if candidate.is_file():
            return candidate
    return roots[0] / name


def load_llava(path: Path, image_folder: Path | Sequence[Path] | None = None) -> list[LlavaRecord]:
    """The samples of a LLaVA JSON file; ``image`` fields resolve against ``image_folder`` (one folder or several,
    searched in order; default ``images/`` beside the file). Raises DataFormatError at the first bad sample, naming
    ``file:line``, the sample and the fix."""
    path = Path(path)
    roots = image_roots(path, image_folder)
    out = []
    for n, (line, row) in enumerate(iter_json_array(path)):
        out.append(llava_record(row, f"{path}:{line} (sample {n})", roots, line))
    return out


def llava_record(row: object, where: str, roots: Sequence[Path], line: int = 0) -> LlavaRecord:
    """One validated sample (``where`` names it in errors)."""
    if not isinstance(row, dict) or "conversations" not in row or "id" not in row:
        raise DataFormatError(f"{where}: a sample needs 'id' and 'conversations' (LLaVA JSON: "
                              "{'id', 'image', 'conversations': [{'from', 'value'}, ...]})")
    sid = row["id"]
    if isinstance(sid, bool) or not isinstance(sid, (str, int)):
        raise DataFormatError(f"{where}: 'id' must be a string or an integer, got {type(sid).__name__}")
    conv = row["conversations"]
    if not isinstance(conv, list) or len(conv) < 2:
        raise DataFormatError(f"{where}: 'conversations' must hold at least one human/gpt pair")
    for t, turn in enumerate(conv):
        want = "human" if t % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != want or not isinstance(turn.get("value"), str):
            got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
            raise DataFormatError(f"{where}: conversations[{t}] must be {{'from': '{want}', 'value': str}}, got from={got!r}; "
                                  "turns alternate human/gpt starting with human")
    image = row.get("image")
    if image is None:
        if any(IMAGE_TOKEN in turn["value"] for turn in conv):
            raise DataFormatError(f"{where}: a text-only sample (no 'image') holds {IMAGE_TOKEN}; add its 'image' or drop the token")
        return LlavaRecord(id=str(sid), image=None, conversations=conv, line=line)
    if not isinstance(image, str) or not image.strip():
        raise DataFormatError(f"{where}: 'image' must be a relative path string, got {image!r}")
    if IMAGE_TOKEN not in conv[0]["value"]:
        raise DataFormatError(f"{where}: first human turn lacks the {IMAGE_TOKEN} token; LLaVA puts it in the first human turn")
    return LlavaRecord(id=str(sid), image=resolve_image(image, roots), conversations=conv, line=line)


__all__ = ["IMAGE_TOKEN", "LlavaRecord", "image_roots", "llava_record", "load_llava", "resolve_image"]
