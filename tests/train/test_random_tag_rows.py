"""train.stage2.random_tags: a seeded share of the tagged data rows trained on the random tag mode's tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from support import SMOKE
from tuna.errors import ConfigError
from tuna.recipe import load_recipe
from tuna.train.data import DataError, Example, random_tag_rows


def test_a_seeded_share_of_tagged_rows_gets_the_random_tags_of_its_image() -> None:
    examples = [Example(f"row-{i}", Path(f"{i % 50}.png"), [1], [1], ["real tag"] if i % 4 else []) for i in range(2000)]
    pool = {Path(f"{i}.png"): [f"drawn {i}", "other"] for i in range(50)}
    out = random_tag_rows(examples, 0.3, 5, pool)
    swapped = {ex.id for ex in out if ex.tags and ex.tags != ["real tag"]}
    tagged = [ex for ex in examples if ex.tags]
    assert 0.27 < len(swapped) / len(tagged) < 0.33
    assert all(ex.tags == pool[ex.image] for ex in out if ex.id in swapped)           # the row's own image's draw
    assert [(ex.id, ex.image, ex.input_ids) for ex in out] == [(ex.id, ex.image, ex.input_ids) for ex in examples]
    assert all(not b.tags for a, b in zip(examples, out) if not a.tags)                  # dropped tags stay dropped
    assert {ex.id for ex in random_tag_rows(examples[::-1], 0.3, 5, pool) if ex.tags and ex.tags != ["real tag"]} == swapped
    assert random_tag_rows(examples, 0.3, 6, pool) != out
    assert random_tag_rows(examples, 0.0, 5, pool) == examples
    assert random_tag_rows(examples, 0.3, 5, {}) == examples                            # no draw for the image: kept
    with pytest.raises(DataError, match="random tags"):
        random_tag_rows(examples, 1.0, 5, pool)


def test_stage2_random_tags_through_the_data_path_leaves_the_baseline(prepared: Any) -> None:
    """On the smoke world: some tagged data rows carry the random tag mode's tags (from the datastore's vocabulary),
    the rest are as before; the tags-free baseline is untouched."""
    from tuna.train.engine import _examples

    tok = AutoTokenizer.from_pretrained(Path(prepared.cfg.data_dir) / "lm")
    over = [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=0", "train.stage2.reading_scenes=0"]
    base, _ = _examples(load_recipe(SMOKE, over), "tuna", 2, tok, 0, lambda: None, lambda s: None)
    cfg = load_recipe(SMOKE, [*over, "train.stage2.random_tags=0.5"])
    said: list[str] = []
    rows, _ = _examples(cfg, "tuna", 2, tok, 0, lambda: None, said.append)
    changed = [(a, b) for a, b in zip(base, rows) if a != b]
    assert [(r.id, r.image, r.input_ids) for r in rows] == [(r.id, r.image, r.input_ids) for r in base]
    assert changed and len(changed) < len(rows) and any(f": {len(changed)} of {len(rows)} rows" in s for s in said)
    assert all(len(b.tags) == len(a.tags) == cfg.model.num_tags and a.tags != b.tags for a, b in changed)
    baseline, _ = _examples(cfg, "baseline", 2, tok, 0, lambda: None, lambda s: None)
    assert baseline == _examples(load_recipe(SMOKE, over), "baseline", 2, tok, 0, lambda: None, lambda s: None)[0]


def test_random_tags_is_a_share_below_one() -> None:
    with pytest.raises(ConfigError, match="random_tags"):
        load_recipe(SMOKE, ["train.stage2.random_tags=1"])
