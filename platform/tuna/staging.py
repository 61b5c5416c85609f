"""Write a step's output folder (or file) atomically: build it beside the target, rename it into place at the end.

A failed or interrupted step leaves the previous output untouched and no half-written folder or file behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuna.errors import OutputError


def _fresh_dir(target: Path, what: str) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as err:
        raise OutputError(f"cannot write the {what} under {str(target.parent)!r} ({err.strerror or err}); "
                          f"set run.data_dir to a writable folder") from None
    return tmp


def publish(tmp: Path, target: Path, what: str) -> None:
    """Replace ``target`` by the finished folder ``tmp``."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    try:
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    except OSError as err:
        raise OutputError(f"cannot move the finished {what} into {str(target)!r} ({err.strerror or err}); "
                          f"check permissions on {str(target.parent)!r}") from None
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(target: Path, what: str) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; on success it becomes ``target``, on any error it is removed."""
    tmp = _fresh_dir(target, what)
    try:
        yield tmp
        publish(tmp, target, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """Yield a fresh path beside ``target`` (its folder created; unique per process, so ranks may write the same file
    at once); on success it replaces ``target``, on any error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
