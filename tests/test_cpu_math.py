"""tuna.cpu_math: the trainers' thread count and subnormal flush, set and restored."""
from __future__ import annotations

import pytest
import torch

from tuna.cpu_math import cpu_math

SUBNORMAL = 1e-40  # below float32's smallest normal (1.18e-38), above its smallest subnormal (1.4e-45)


def _survives(x: float) -> bool:
    return (torch.tensor([x], dtype=torch.float32) * 1.0).item() != 0.0


def test_cpu_math_flushes_subnormals_inside_and_restores_threads_after() -> None:
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal returned False)")
    before = torch.get_num_threads()
    assert _survives(SUBNORMAL)
    with cpu_math(1):
        assert torch.get_num_threads() == 1
        assert not _survives(SUBNORMAL)
        assert _survives(1e-30)  # normal floats are untouched
    assert torch.get_num_threads() == before
    assert _survives(SUBNORMAL)


def test_cpu_math_restores_on_error_and_rejects_a_bad_thread_count() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), cpu_math(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"), cpu_math(0):
        pass
    assert torch.get_num_threads() == before
