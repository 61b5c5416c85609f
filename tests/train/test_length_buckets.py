"""``train.length_buckets``: a micro-batch cut into runs of similar lengths (fewest padded tokens), one forward per
run, the losses weighted by their labelled tokens (the real engine: tests/train/test_deepspeed_training.py)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from support import SMOKE
from tuna.errors import ConfigError
from tuna.recipe import load_recipe
from tuna.train.data import Example, length_split, padding_ratio
from tuna.train.engine import micro_loss


def _ex(n: int, name: str = "") -> Example:
    return Example(id=name or str(n), image=Path(f"{name or n}.png"), input_ids=[1] * n, labels=[-100] * n)


def _padded(runs: list[list[Example]]) -> int:
    return sum(len(r) * max(len(ex.input_ids) for ex in r) for r in runs)


def test_two_runs_keep_the_short_rows_apart_from_the_long_ones() -> None:
    batch = [_ex(30, "a"), _ex(170, "b"), _ex(40, "c"), _ex(160, "d")]
    runs = length_split(batch, 2)
    assert [[ex.id for ex in r] for r in runs] == [["a", "c"], ["d", "b"]]
    assert _padded(runs) == 2 * 40 + 2 * 170 and _padded([batch]) == 4 * 170
    assert [[ex.id for ex in r] for r in length_split(batch, 1)] == [["a", "c", "d", "b"]]


def test_the_run_count_never_depends_on_the_lengths() -> None:
    """Every rank runs as many forwards per micro-batch (ZeRO-3 gathers the weights in each one)."""
    runs = length_split([_ex(50, str(i)) for i in range(16)], 8)
    assert len(runs) == 8 and all(runs) and sum(map(len, runs)) == 16
    assert len(length_split([_ex(50), _ex(60)], 3)) == 2


def test_the_cut_is_the_fewest_padded_tokens_of_every_possible_cut() -> None:
    rng = random.Random(0)
    for _ in range(200):
        batch = [_ex(rng.randint(16, 176), str(i)) for i in range(rng.randint(1, 9))]
        k = rng.randint(1, 4)
        runs = length_split(batch, k)
        assert sorted(ex.id for r in runs for ex in r) == sorted(ex.id for ex in batch)
        assert len(runs) == min(k, len(batch)) and all(runs)
        order = sorted(batch, key=lambda ex: len(ex.input_ids))
        m = min(k, len(order)) - 1
        best = min(_padded([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))])
                   for cuts in itertools.combinations(range(1, len(order)), m))
        assert _padded(runs) == best


def test_padding_ratio_counts_computed_positions_per_real_token() -> None:
    batches = [[_ex(30), _ex(170)], [_ex(100), _ex(100)]]
    assert padding_ratio(batches) == pytest.approx((2 * 170 + 2 * 100) / 400)
    assert padding_ratio(batches, 2) == 1.0


class _Out:
    def __init__(self, loss: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss, self.labels = loss, labels


class _Engine:
    """A stand-in for the DeepSpeed engine (a unit test of the code around it): the mean of per-token losses
    ``input_ids * 0.01`` at the labelled next positions, as the model's label loss reads them."""

    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor, loss_only: bool) -> _Out:
        self.calls.append(input_ids.shape[1])
        keep = labels[:, 1:] != -100
        return _Out((input_ids[:, 1:].float() * 0.01)[keep].mean(), labels)


def _collate(batch: list[Example]) -> dict[str, torch.Tensor]:
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.tensor([ex.input_ids + [0] * (width - len(ex.input_ids)) for ex in batch])
    labels = torch.tensor([ex.labels + [-100] * (width - len(ex.labels)) for ex in batch])
    return {"input_ids": ids, "labels": labels}


def test_the_runs_losses_weighted_by_their_labelled_tokens_are_the_whole_batchs_loss() -> None:
    rng = random.Random(1)
    batch = []
    for i in range(8):
        n = rng.choice([20, 24, 150, 170])
        answer = rng.randint(1, n // 3)
        batch.append(Example(id=str(i), image=Path(f"{i}.png"), input_ids=[rng.randint(1, 99) for _ in range(n)],
                             labels=[-100] * (n - answer) + [rng.randint(1, 99) for _ in range(answer)]))
    whole, split = _Engine(), _Engine()
    assert float(micro_loss(split, _collate, batch, 2)) == pytest.approx(float(micro_loss(whole, _collate, batch, 1)), rel=1e-6)
    assert len(whole.calls) == 1 and len(split.calls) == 2 and sum(split.calls) < 2 * whole.calls[0]


@pytest.mark.parametrize(("bad", "says"), [("0", "must be 1 \\(off\\) .. 8 sub-batches per micro-batch, got 0"),
                                         ("9", "must be 1 \\(off\\) .. 8 sub-batches per micro-batch, got 9"),
                                         ("1.5", "must be an integer, got 1.5")])
def test_bad_buckets_are_one_line(bad: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"train.length_buckets: {says}"):
        load_recipe(SMOKE, [f"train.length_buckets={bad}"])
