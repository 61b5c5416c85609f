"""How torch computes on CPUs for our trainers: a thread count, and subnormal floats flushed to zero.

Subnormal floats (tiny Adam moments, weights and activations late in training) run ~10-100x slower than normal ones on
x86 CPUs. Flushing them to zero kept mini's TUNA stage-2 step flat at 0.25 s where it grew 0.27 -> 0.52 s by step 600,
with the same loss at every step to 1e-6 (2026-12-07). On a GPU the flag changes nothing.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def use_cpu_math(threads: int | None) -> None:
    """For the rest of the process: ``threads`` torch CPU threads (None keeps the count) and subnormals flushed."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}; set the recipe's threads to a positive count")
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


@contextlib.contextmanager
def cpu_math(threads: int | None) -> Iterator[None]:
    """Run the block under ``use_cpu_math(threads)``, then restore the thread count and torch's default (no flush).

    torch has no getter for the flush flag: on exit it is set back to torch's default, off.
    """
    before = torch.get_num_threads()
    use_cpu_math(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)
