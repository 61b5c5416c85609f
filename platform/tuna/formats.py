"""The real corpus formats the platform consumes: the writers the bundled world uses, and the readers.

The bundled world writes these formats and every later step reads them with the readers of :mod:`tuna.readers`
(re-exported here), so the same loaders read the world's copies and real data:

- web corpus: WebDataset tar shards as img2dataset writes CC3M/CC12M (``{key}.jpg|png|webp``,
  ``{key}.txt``, ``{key}.json``) plus one parquet of metadata per shard (:mod:`tuna.readers.web`);
- alignment / instruction sets: LLaVA JSON (``id``, ``image``, ``conversations``; :mod:`tuna.readers.llava`);
- scene annotations and captions: COCO ``instances`` and ``captions`` JSON (:mod:`tuna.readers.coco`);
- POPE question files (JSON lines: ``question_id``, ``image``, ``text``, ``label``; :mod:`tuna.readers.pope`);
- FINER JSON lines (``basic-level-lbl``, ``coarse-level-lbl``, ``fine-level-lbl``; :mod:`tuna.readers.finer`);
- MME folders in both release layouts (:mod:`tuna.readers.mme`);
- a text corpus in JSON lines (``{"id", "text"}``).

Readers raise :class:`~tuna.errors.DataFormatError` naming the file, the line and the field.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tuna.readers.coco import coco_boxes_by_image, coco_objects_by_image, load_coco
from tuna.readers.finer import FINER_FIELDS, load_finer
from tuna.readers.jsonio import read_jsonl
from tuna.readers.llava import LlavaRecord, load_llava
from tuna.readers.mme import MmeItem, load_mme
from tuna.readers.pope import POPE_FIELDS, load_pope
from tuna.readers.web import IMAGE_EXTS, WebSample, iter_web


def dump_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no trailing spaces)."""
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def dump_jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_web_shard(path: Path, samples: Sequence[tuple[str, bytes, str, bytes, dict[str, Any]]]) -> None:
    """Write one WebDataset shard ``path`` (.tar) and its metadata ``path.with_suffix('.parquet')``.

    ``samples``: (key, image bytes, image ext, caption bytes, meta). Byte-identical for equal input.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, ext, caption, meta in samples:
            _tar_add(tar, f"{key}.{ext}", image)
            _tar_add(tar, f"{key}.txt", caption)
            _tar_add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
    table = pa.table({
        "key": [s[0] for s in samples],
        "caption": [s[3].decode("utf-8", errors="replace") for s in samples],
        "status": ["success"] * len(samples),
        "width": [int(s[4].get("width", 0)) for s in samples],
        "height": [int(s[4].get("height", 0)) for s in samples],
    })
    pq.write_table(table, path.with_suffix(".parquet"), compression="zstd")


def iter_text(path: Path) -> Iterator[str]:
    """Documents of a JSON-lines text corpus (``{"text": ...}``)."""
    for row in read_jsonl(path, ("text",)):
        yield row["text"]


__all__ = ["FINER_FIELDS", "IMAGE_EXTS", "POPE_FIELDS", "LlavaRecord", "MmeItem", "WebSample", "coco_boxes_by_image",
           "coco_objects_by_image",
           "dump_json", "dump_jsonl", "iter_text", "iter_web", "load_coco", "load_finer", "load_llava", "load_mme",
           "load_pope", "read_jsonl", "write_web_shard"]
