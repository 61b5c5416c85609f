"""train.stage2.novel_names: a seeded share of the tagged rows with their spoken, tagged classes renamed to pseudo-words."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from support import SMOKE
from tuna.errors import ConfigError
from tuna.formats import LlavaRecord
from tuna.recipe import load_recipe
from tuna.train.data import Example, prepare
from tuna.world.language import plural

SYSTEM = "A chat."
NAMES = ["zedul", "plotutroux", "migul"]


def _record(rid: str, *turns: str) -> LlavaRecord:
    return LlavaRecord(rid, Path(f"{rid}.png"), [{"from": "human" if i % 2 == 0 else "gpt", "value": v}
                                                 for i, v in enumerate(turns)])


def _text(tok: Any, ex: Example) -> str:
    return tok.decode([i for i in ex.input_ids if i >= 0])


@pytest.fixture(scope="module")
def world_tok(prepared: Any) -> Any:
    return AutoTokenizer.from_pretrained(Path(prepared.cfg.data_dir) / "lm")


def _rows(tok: Any) -> tuple[list[LlavaRecord], list[Example]]:
    records = [_record(f"r{i}", "<image>\nHow many zeduls are there?", "There are two zeduls.",
                       "Is there a plotutroux in the image?", "No") for i in range(40)]
    examples = prepare(records, tok, 2, 256, SYSTEM).examples
    tags = [["zedul", "red zedul", "migul"] if i % 4 else [] for i in range(40)]
    return records, [Example(e.id, e.image, e.input_ids, e.labels, t) for e, t in zip(examples, tags)]


def test_renamed_rows_name_their_spoken_tagged_classes_anew_in_text_and_tags(world_tok: Any) -> None:
    from tuna.train.renames import rename_classes

    records, examples = _rows(world_tok)
    out, renamed = rename_classes(examples, records, NAMES, 0.5, 7, world_tok, 2, 256, SYSTEM)
    changed = [(a, b) for a, b in zip(examples, out) if a != b]
    assert renamed == len(changed) and 0 < renamed < 30
    for before, after in changed:
        new = after.tags[0]
        assert before.tags and new not in NAMES and re.fullmatch(r"[a-z]{5,10}", new)
        assert after.tags == [new, f"red {new}", "migul"]                      # only the spoken class; a tag-only one stays
        text = _text(world_tok, after)
        assert f"two {plural(new)}." in text and "zedul" not in text
        assert "plotutroux" in text                                             # spoken but untagged: kept
        assert (after.id, after.image) == (before.id, before.image) and after.labels != before.labels
    assert all(not a.tags for a, b in zip(examples, out) if a == b and not b.tags) and all(
        ex.tags for ex, _ in changed)                                           # untagged rows are never renamed
    again, _ = rename_classes(examples[::-1], records, NAMES, 0.5, 7, world_tok, 2, 256, SYSTEM)
    assert again[::-1] == out                                                  # per row: order-free
    other, _ = rename_classes(examples, records, NAMES, 0.5, 8, world_tok, 2, 256, SYSTEM)
    assert other != out
    assert rename_classes(examples, records, NAMES, 0.0, 7, world_tok, 2, 256, SYSTEM) == (examples, 0)


def test_a_row_that_no_longer_fits_max_length_renamed_stays_as_it_was(world_tok: Any, monkeypatch: Any) -> None:
    import tuna.train.renames as renames

    monkeypatch.setattr(renames, "pseudo_word", lambda rng, taken: "zzqzzqzzqx")   # many tokens where "zedul" is one
    assert len(world_tok("zzqzzqzzqx", add_special_tokens=False).input_ids) > len(world_tok("zedul", add_special_tokens=False).input_ids)
    records = [_record(f"r{i}", "zedul " * 30 + "<image>\nWhat is it?", "zedul") for i in range(40)]
    fit = len(prepare(records[:1], world_tok, 2, 4096, SYSTEM).examples[0].input_ids)
    examples = [dataclasses.replace(e, tags=["zedul"]) for e in prepare(records, world_tok, 2, fit, SYSTEM).examples]
    out, renamed = renames.rename_classes(examples, records, NAMES, 0.5, 7, world_tok, 2, fit, SYSTEM)
    assert len(examples) == 40 and renamed == 0 and out == examples
    assert renames.rename_classes(examples, records, NAMES, 0.5, 7, world_tok, 2, 4096, SYSTEM)[1] > 0


def test_stage2_novel_names_renames_tuna_rows_and_leaves_the_baseline(prepared: Any, world_tok: Any) -> None:
    """On the smoke world, through the stage's data path: some tagged data rows renamed, the rest, the reading rows
    and the tags-free baseline untouched."""
    from tuna.train.engine import _examples

    over = [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=0"]
    base, _ = _examples(load_recipe(SMOKE, over), "tuna", 2, world_tok, 0, lambda: None, lambda s: None)
    cfg = load_recipe(SMOKE, [*over, "train.stage2.novel_names=0.5"])
    said: list[str] = []
    rows, _ = _examples(cfg, "tuna", 2, world_tok, 0, lambda: None, said.append)
    assert [(r.id, r.image) for r in rows] == [(r.id, r.image) for r in base]
    changed = [(a, b) for a, b in zip(base, rows) if a != b]
    assert changed and len(changed) < len(rows) and any(f": {len(changed)} of {len(rows)} rows" in s for s in said)
    for before, after in changed:
        gone = set(before.tags) - set(after.tags)
        assert gone and len(after.tags) == len(before.tags) and before.tags
    baseline, _ = _examples(cfg, "baseline", 2, world_tok, 0, lambda: None, lambda s: None)
    plain, _ = _examples(load_recipe(SMOKE, over), "baseline", 2, world_tok, 0, lambda: None, lambda s: None)
    assert baseline == plain


def test_novel_names_is_a_share_below_one() -> None:
    with pytest.raises(ConfigError, match="novel_names"):
        load_recipe(SMOKE, ["train.stage2.novel_names=1"])


def test_decoys_keep_the_real_name_in_a_free_tag_while_the_new_name_stays_the_majority(world_tok: Any) -> None:
    from tuna.train.renames import rename_classes

    records, examples = _rows(world_tok)
    plain, renamed = rename_classes(examples, records, NAMES, 0.5, 7, world_tok, 2, 256, SYSTEM)
    out, again = rename_classes(examples, records, NAMES, 0.5, 7, world_tok, 2, 256, SYSTEM, decoys=1)
    assert again == renamed > 0
    for before, one, two in zip(examples, plain, out):
        if one == before:
            assert two == before
            continue
        new = one.tags[0]
        assert two.tags == [new, f"red {new}", "zedul"]          # the tag-only class's tag gives way to the real name
        assert (two.input_ids, two.labels) == (one.input_ids, one.labels)   # the answer still says the new name
    single = [dataclasses.replace(e, tags=["zedul", "migul"]) if e.tags else e for e in examples]
    once, _ = rename_classes(single, records, NAMES, 0.5, 7, world_tok, 2, 256, SYSTEM, decoys=1)
    assert all("zedul" not in ex.tags for ex, before in zip(once, single) if ex != before)   # one tag: no decoy
    crowded = [dataclasses.replace(e, tags=["zedul", "red zedul"]) if e.tags else e for e in examples]
    full, _ = rename_classes(crowded, records, NAMES, 0.5, 7, world_tok, 2, 256, SYSTEM, decoys=1)
    assert all("zedul" not in ex.tags for ex, before in zip(full, crowded) if ex != before)   # no free tag: no decoy


def test_novel_decoys_need_novel_names() -> None:
    with pytest.raises(ConfigError, match="novel_decoys.*novel_names"):
        load_recipe(SMOKE, ["train.stage2.novel_decoys=1"])
    from tuna.train.freshness import fingerprint

    renamed = load_recipe(SMOKE, ["train.stage2.novel_names=0.2"])
    decoyed = load_recipe(SMOKE, ["train.stage2.novel_names=0.2", "train.stage2.novel_decoys=1"])
    assert decoyed.train.stage(2).novel_decoys == 1
    assert fingerprint(renamed, "tuna", 2, 2) != fingerprint(decoyed, "tuna", 2, 2)
    assert fingerprint(load_recipe(SMOKE), "baseline", 2, 2) == fingerprint(decoyed, "baseline", 2, 2)
