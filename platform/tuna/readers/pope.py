"""POPE's question files, as RUCAIBox/POPE publishes them in ``output/coco/``: ``coco_pope_random.json``,
``coco_pope_popular.json``, ``coco_pope_adversarial.json``, each JSON lines of ``{"question_id": int, "image":
"COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"|"no"}``, over COCO
val2014's image folder. A POPE source is that folder of question files (or one file: one split); its images are the
source's ``images`` root (default ``images/`` beside the files, where the bundled world puts them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuna.errors import DataFormatError
from tuna.readers.jsonio import iter_jsonl

POPE_SPLITS = ("random", "popular", "adversarial")
POPE_FIELDS = ("question_id", "image", "text", "label")


def load_pope(path: Path) -> list[dict[str, Any]]:
    """The questions of one POPE file, types checked."""
    return [row for _, row in pope_lines(path)]


def pope_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, question) for each question of one POPE file, types checked."""
    rows = []
    for n, row in iter_jsonl(path, POPE_FIELDS):
        where = f"{path}:{n}"
        if row["label"] not in ("yes", "no"):
            raise DataFormatError(f"{where}: question {row['question_id']}: label must be 'yes' or 'no', got {row['label']!r}")
        if isinstance(row["question_id"], bool) or not isinstance(row["question_id"], (int, str)):
            raise DataFormatError(f"{where}: question_id must be an integer, got {row['question_id']!r}")
        for key in ("image", "text"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise DataFormatError(f"{where}: {key} must be a non-empty string, got {row[key]!r}")
        rows.append((n, row))
    return rows


def pope_split_files(path: Path) -> dict[str, Path]:
    """split -> question file: every ``*_pope_{random,popular,adversarial}.json`` of a folder (exactly one per
    split), or the one split a file ``path`` is; DataFormatError naming the folder when a split is missing or doubled."""
    path = Path(path)
    if path.is_file():
        split = next((s for s in POPE_SPLITS if path.name.endswith(f"_pope_{s}.json")), None)
        if split is None:
            raise DataFormatError(f"{path}: a POPE question file is named *_pope_{{{','.join(POPE_SPLITS)}}}.json "
                                  "(coco_pope_random.json); rename it or point at its folder")
        return {split: path}
    if not path.is_dir():
        raise DataFormatError(f"{path}: does not exist; point the source at POPE's output/coco folder")
    out: dict[str, Path] = {}
    for split in POPE_SPLITS:
        found = sorted(path.glob(f"*_pope_{split}.json"))
        if len(found) != 1:
            what = "no file" if not found else f"{len(found)} files ({', '.join(p.name for p in found)})"
            raise DataFormatError(f"{path}: {what} matching *_pope_{split}.json; expected exactly one per split")
        out[split] = found[0]
    return out


def load_pope_splits(path: Path) -> dict[str, list[dict[str, Any]]]:
    """split -> question rows of a POPE folder (or file)."""
    return {split: load_pope(file) for split, file in pope_split_files(path).items()}


__all__ = ["POPE_FIELDS", "POPE_SPLITS", "load_pope", "pope_lines", "load_pope_splits", "pope_split_files"]
