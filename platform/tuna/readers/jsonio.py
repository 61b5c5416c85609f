"""JSON and JSON-lines reading that names the file and the line of every bad record."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tuna.errors import DataFormatError


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; DataFormatError naming the file when it is missing or not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found; check the source's path") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a folder, expected a file") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 (byte {err.start}); re-encode the file as UTF-8") from None


def read_json(path: Path) -> Any:
    """One JSON document."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def iter_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, element) for each element of the top-level JSON list in ``path`` (line = where the element starts),
    so errors about one sample of a large LLaVA file can name its line."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        what = "an empty file" if pos >= len(text) else f"{text[pos]!r}"
        raise DataFormatError(f"{path}:1: expected a JSON list of samples ('['), found {what}; "
                              "a JSON-lines file is not this format")
    line, seen = 1, 0
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line += text.count("\n", seen, pos)
        seen = pos
        try:
            element, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        yield line, element
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise DataFormatError(f"{path}:{line + text.count(chr(10), seen, pos)}: expected ',' or ']' after a sample")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def iter_jsonl(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) for each non-blank line of a JSON-lines file; each must be an object holding ``required``."""
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}:{n}: not valid JSON ({err.msg}); one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataFormatError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise DataFormatError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        yield n, row


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """JSON lines, each a mapping holding ``required`` keys; blank lines are skipped."""
    return [row for _, row in iter_jsonl(path, required)]


__all__ = ["iter_json_array", "iter_jsonl", "read_json", "read_jsonl", "read_text"]
