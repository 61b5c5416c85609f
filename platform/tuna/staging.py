"""Write a step's output folder atomically: build it beside the target, rename it into place at the end.

A failed or interrupted step leaves the previous output untouched and no half-written folder behind.
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
