"""Web corpora as img2dataset writes them with ``output_format=webdataset``.

A corpus is a set of tar shards (``00000.tar``, ``00001.tar``, ...) each holding, per sample, ``{key}.jpg|png|webp``
(the image, in img2dataset's ``encode_format``), ``{key}.txt`` (the caption) and ``{key}.json`` (url, caption, key,
status, error_message, width, height, original_width, original_height, exif, sha256), plus ``{shard}.parquet`` beside
each tar with the same metadata per row (failed downloads appear there with ``status`` != "success" and are absent
from the tar) and ``{shard}_stats.json``. A source's path names the shards as a folder (every ``*.tar`` in it), a glob
(``/data/cc3m/*.tar``) or a brace list (``/data/cc3m/{00000..00331}.tar``, as webdataset and img2dataset users write).
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna.errors import CorruptSample, DataFormatError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")

OnSkip = Callable[[CorruptSample, str], None]   # (what was skipped, where) -> None; e.g. Quarantine.add


@dataclass(frozen=True)
class WebSample:
    """One raw web sample; bytes are undecoded so a batch job can quarantine what does not decode."""

    key: str
    shard: str
    image: bytes | None
    image_ext: str | None
    caption: bytes | None
    meta: dict[str, Any]

    def text(self) -> str:
        """The caption as text; raises CorruptSample when missing, empty or not UTF-8."""
        if self.caption is None:
            raise CorruptSample(self.key, "no caption (.txt) in the shard", "no_caption")
        try:
            text = self.caption.decode("utf-8")
        except UnicodeDecodeError as err:
            raise CorruptSample(self.key, f"caption is not UTF-8 (byte {err.start})", "non_utf8_caption") from None
        if not text.strip():
            raise CorruptSample(self.key, "caption is empty", "empty_caption")
        return text


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b`` -> a00b, a01b, a02b (zero padding kept); ``{x,y}`` -> x, y; nested and repeated groups too."""
    found = [m for m in (_RANGE.search(pattern), _LIST.search(pattern)) if m]
    m = min(found, key=lambda x: x.start()) if found else None   # the leftmost group varies slowest, as in a URL list
    if m and m.re is _RANGE:
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise DataFormatError(f"{pattern}: brace range {m.group(0)} runs backwards; write {{{hi}..{lo}}}")
        width = len(m.group(1)) if m.group(1).startswith("0") else 0
        return [out for i in range(lo, hi + 1)
                for out in expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])]
    if m:
        return [out for part in m.group(1).split(",") for out in expand_braces(pattern[:m.start()] + part + pattern[m.end():])]
    return [pattern]


def shard_paths(spec: Path | str) -> tuple[list[Path], list[Path]]:
    """(shards that exist, shards named by a brace list that do not) for a folder, glob or brace list."""
    text = str(spec)
    if Path(text).is_dir():
        return sorted(Path(text).glob("*.tar")), []
    found: list[Path] = []
    missing: list[Path] = []
    for pattern in expand_braces(text):
        if glob.has_magic(pattern):
            found += sorted(Path(p) for p in glob.glob(pattern))
        elif Path(pattern).is_file():
            found.append(Path(pattern))
        else:
            missing.append(Path(pattern))
    return list(dict.fromkeys(found)), missing


def iter_web(spec: Path | str, on_skip: OnSkip | None = None) -> Iterator[WebSample]:
    """Every sample of every shard named by ``spec`` (folder, glob or brace list), grouped by key.

    A shard that is missing, not a tar or truncated is skipped and reported to ``on_skip`` (kind ``missing_shard``
    / ``bad_shard``, key = the shard) with the samples read before the damage kept; without ``on_skip`` it raises
    DataFormatError naming the shard. Damaged members (no image, no caption) reach the caller as samples with
    ``image``/``caption`` None, for the caller's own quarantine."""
    shards, missing = shard_paths(spec)
    if not shards:
        raise DataFormatError(f"{spec}: no WebDataset shards (*.tar) there; point the source at a folder of shards, "
                              "a glob (/data/cc3m/*.tar) or a brace list (/data/cc3m/{00000..00099}.tar)")
    for shard in missing:
        _skip(on_skip, CorruptSample(shard.name, f"shard {shard} does not exist", "missing_shard"), str(shard))
    for shard in shards:
        yield from _iter_shard(shard, on_skip)


def _skip(on_skip: OnSkip | None, err: CorruptSample, where: str) -> None:
    if on_skip is None:
        raise DataFormatError(f"{where}: {err.reason}; re-download the shard or leave it out of the source's path")
    on_skip(err, where)


def _iter_shard(shard: Path, on_skip: OnSkip | None) -> Iterator[WebSample]:
    try:
        tar = tarfile.open(shard, "r")
    except (tarfile.TarError, OSError) as err:
        _skip(on_skip, CorruptSample(shard.name, f"not a readable tar ({err})", "bad_shard"), str(shard))
        return
    with tar:
        current: str | None = None
        parts: dict[str, bytes] = {}
        try:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition(".")
                if current is not None and key != current:
                    yield web_sample(current, shard.name, parts)
                    parts = {}
                current = key
                f = tar.extractfile(member)
                parts[ext.lower()] = f.read() if f else b""
        except (tarfile.TarError, OSError, EOFError) as err:
            _skip(on_skip, CorruptSample(shard.name, f"tar is damaged after key {current!r} ({err})", "bad_shard"), str(shard))
            return
        if current is not None:
            yield web_sample(current, shard.name, parts)


def web_sample(key: str, shard: str, parts: dict[str, bytes]) -> WebSample:
    """One sample from its members (extension -> bytes); a .json that does not parse counts as no metadata."""
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    try:
        meta = json.loads(parts["json"]) if "json" in parts else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    return WebSample(key=key, shard=shard, image=parts.get(ext) if ext else None, image_ext=ext,
                     caption=parts.get("txt"), meta=meta if isinstance(meta, dict) else {})


def shard_status(shard: Path) -> dict[str, int]:
    """status -> rows of the img2dataset parquet beside ``shard`` ({} when there is none): how many URLs of the
    shard failed to download (they are in the parquet, not in the tar)."""
    table_path = shard.with_suffix(".parquet")
    if not table_path.is_file():
        return {}
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(table_path, columns=["status"])
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataFormatError(f"{table_path}: not a readable parquet with a 'status' column ({type(err).__name__}: {err})") from None
    out: dict[str, int] = {}
    for status in table.column("status").to_pylist():
        out[str(status)] = out.get(str(status), 0) + 1
    return out


__all__ = ["IMAGE_EXTS", "OnSkip", "WebSample", "expand_braces", "iter_web", "shard_paths", "shard_status", "web_sample"]
