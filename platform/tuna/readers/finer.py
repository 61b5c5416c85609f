"""FINER's label files (wjdghks950/Finer, ``data/{dataset}/unified-{dataset}-{split}-combined.jsonl``) and the
bundled world's ``finer.jsonl``.

Upstream rows: ``{"idx": 278, "basic-level-lbl": "Airplane", "coarse-level-lbl": ["Boeing"], "fine-level-lbl":
["Boeing 737", "737-800"], "img_path": "{data_dir_path}/fgvc-aircraft-2013b/data/images/1935750.jpg", "metadata": {}}``:
labels may be a string or a list of strings, and ``img_path`` starts with the data folder (the literal
``{data_dir_path}`` placeholder, or the real folder once substituted). World rows: ``{"id", "image",
"basic-level-lbl", "coarse-level-lbl", "fine-level-lbl", "attributes"}`` with ``image`` under ``images/``.
Both are read into the world's shape: ``id`` (from ``idx``) and ``image`` (relative to the source's image root, or
absolute), labels type-checked at load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuna.errors import DataFormatError
from tuna.readers.jsonio import iter_jsonl

LABEL_FIELDS = ("basic-level-lbl", "coarse-level-lbl", "fine-level-lbl")
FINER_FIELDS = ("id", "image", *LABEL_FIELDS)
DATA_DIR_PLACEHOLDER = "{data_dir_path}"


def finer_file(path: Path) -> Path:
    """The label file of a FINER source: the file itself, ``finer.jsonl`` in a folder (the world), or the one
    ``unified-*-combined.jsonl`` in a folder (upstream)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataFormatError(f"{path}: file not found; point the source at a FINER .jsonl file or its folder")
    if (path / "finer.jsonl").is_file():
        return path / "finer.jsonl"
    found = sorted(path.glob("unified-*-combined.jsonl"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DataFormatError(f"{path}: {what} finer.jsonl or unified-*-combined.jsonl files; point the source's path at one file")
    return found[0]


def _labels(value: Any, field: str, where: str, single: bool) -> None:
    ok = isinstance(value, str) and bool(value.strip())
    if not single and isinstance(value, list):
        ok = bool(value) and all(isinstance(v, str) and v.strip() for v in value)
    if not ok:
        want = "a non-empty string" if single else "a non-empty string or a non-empty list of strings"
        raise DataFormatError(f"{where}: {field} must be {want}, got {type(value).__name__} {value!r}; "
                              "fix the row or convert the file to FINER's label types")


def finer_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One row in the world's shape (``id``, ``image``, labels), types checked; upstream keys mapped."""
    row = dict(row)
    if "id" not in row and "idx" in row:
        row["id"] = row["idx"]
    if "image" not in row and "img_path" in row:
        path = row["img_path"]
        if not isinstance(path, str) or not path.strip():
            raise DataFormatError(f"{where}: img_path must be a path string, got {path!r}")
        row["image"] = path.removeprefix(DATA_DIR_PLACEHOLDER).lstrip("/") if path.startswith(DATA_DIR_PLACEHOLDER) else path
    missing = [k for k in FINER_FIELDS if k not in row]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {', '.join(missing)} (FINER rows hold idx, img_path and "
                              f"{', '.join(LABEL_FIELDS)})")
    if isinstance(row["id"], bool) or not isinstance(row["id"], (int, str)):
        raise DataFormatError(f"{where}: id/idx must be an integer or a string, got {row['id']!r}")
    if not isinstance(row["image"], str) or not row["image"].strip():
        raise DataFormatError(f"{where}: image must be a path string, got {row['image']!r}")
    _labels(row["basic-level-lbl"], "basic-level-lbl", where, single=True)
    for field in LABEL_FIELDS[1:]:
        _labels(row[field], field, where, single=False)
    return row


def finer_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a FINER source (file or folder), rows in the world's shape."""
    file = finer_file(path)
    return [(n, finer_row(row, f"{file}:{n}")) for n, row in iter_jsonl(file)]


def load_finer(path: Path) -> list[dict[str, Any]]:
    """The rows of a FINER source (file or folder), in the world's shape, labels type-checked."""
    return [row for _, row in finer_lines(path)]


__all__ = ["DATA_DIR_PLACEHOLDER", "FINER_FIELDS", "LABEL_FIELDS", "finer_file", "finer_lines", "finer_row", "load_finer"]
