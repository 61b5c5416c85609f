"""train.stage2.existence_tags: a seeded share of the tagged rows whose tags stop answering their existence turns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from support import SMOKE
from tuna.errors import ConfigError
from tuna.recipe import load_recipe
from tuna.train.data import Example
from tuna.train.existence import edit_tags, existence_cue, existence_object, existence_tag_rows, existence_turns


def _conversation(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


@pytest.mark.parametrize("question, name", [
    ("<image>\nIs there a dining table in the image?\nAnswer the question using a single word or phrase.", "dining table"),
    ("Is there an owl in this image? Please answer yes or no.", "owl"),
    ("Does the image contain a zedul?", "zedul"),
    ("is there a red zedul in the photo", "red zedul"),
    ("How many zeduls are there?", None),
    ("Are there 2 zeduls in the image?", None),
    ("What is in the image? Is it a zedul?", None),
])
def test_existence_object_reads_pope_template_and_its_variants(question: str, name: str | None) -> None:
    assert existence_object(question) == name


def test_existence_turns_pair_questions_with_plain_yes_or_no_answers() -> None:
    conv = _conversation("<image>\nIs there a zedul in the image?", "Yes", "How many migul are there?", "2",
                         "Does the image contain a migul?", "no.", "Is there a tobu in the image?", "A tobu is not there.")
    assert existence_turns(conv) == [("zedul", True), ("migul", False)]
    assert existence_turns([]) == []


def test_edit_tags_drops_every_tag_naming_a_present_object_and_adds_the_absent_ones() -> None:
    tags = ["zedul", "red zedul", "migul", "zeduls pile", "tobu", "zedulet"]
    turns = [("zedul", True), ("plotu", False)]
    out = edit_tags(tags, turns, 9, key=5, filler=["plotu", "red plotu", "kara", "zedul", "lume", "nami"])
    assert "plotu" in out and not [t for t in out if t.split()[0] in ("zedul", "zeduls")]   # whole words, plural too
    assert "zedulet" in out and "migul" in out and "tobu" in out                           # other words stay
    assert len(out) == len(tags) and out[-2:] == ["kara", "lume"]                           # topped up, asked names skipped
    assert len(edit_tags(tags, turns, 4, key=5, filler=["kara"])) == 4                      # at most num_tags
    # an absent name that would name a present object is not added; an absent one already tagged is not doubled
    assert edit_tags(["table"], [("table", True), ("dining table", False)], 9, 0) == []
    assert edit_tags(["plotu", "x"], [("plotu", False)], 9, 3) == ["plotu", "x"]


def test_existence_tag_rows_edit_a_seeded_share_and_level_the_cue() -> None:
    conversations, examples = {}, []
    for i in range(2000):   # the tags name the asked object when it is there, never when it is not: a perfect cue
        yes = i % 2 == 0
        conversations[f"r{i}"] = _conversation("<image>\nIs there a zedul in the image?", "Yes" if yes else "No")
        examples.append(Example(f"r{i}", Path(f"{i}.png"), [1], [1], (["zedul"] if yes else []) + ["migul", "tobu"]))
    examples.append(Example("plain", Path("p.png"), [1], [1], ["zedul"]))                 # no existence turn
    examples.append(Example("untagged", Path("u.png"), [1], [1], []))
    conversations["untagged"] = _conversation("Is there a zedul in the image?", "Yes")
    before = existence_cue(examples, conversations)
    assert (before["p_yes_named"], before["p_yes_unnamed"]) == (1.0, 0.0)
    out, edited = existence_tag_rows(examples, conversations, 0.5, 3, 9)
    assert edited == sum(a != b for a, b in zip(examples, out)) and 900 < edited < 1100
    assert out[-2:] == examples[-2:] and [e.id for e in out] == [e.id for e in examples]
    after = existence_cue(out, conversations)
    assert 0.4 < after["p_yes_named"] < 0.6 and 0.4 < after["p_yes_unnamed"] < 0.6        # the tags no longer answer
    assert existence_tag_rows(examples[::-1], conversations, 0.5, 3, 9)[0][::-1] == out   # per row: order-free
    assert existence_tag_rows(examples, conversations, 0.5, 4, 9)[0] != out
    assert existence_tag_rows(examples, conversations, 0.0, 3, 9) == (examples, 0)


def test_existence_tags_is_a_share_below_one() -> None:
    with pytest.raises(ConfigError, match="existence_tags"):
        load_recipe(SMOKE, ["train.stage2.existence_tags=1"])


def test_stage2_existence_tags_edit_tuna_rows_through_the_data_path_and_leave_the_baseline(prepared: Any) -> None:
    """On the smoke world, through the stage's data path: the cue logged, some rows' tags edited, the baseline as it was."""
    from tuna.train.engine import _examples

    tok = AutoTokenizer.from_pretrained(Path(prepared.cfg.data_dir) / "lm")
    over = [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=0", "train.stage2.reading_scenes=0"]
    said: list[str] = []
    base, _ = _examples(load_recipe(SMOKE, over), "tuna", 2, tok, 0, lambda: None, said.append)
    assert any("existence turns: a tag names the object in" in s for s in said)
    cfg = load_recipe(SMOKE, [*over, "train.stage2.existence_tags=0.5"])
    said.clear()
    rows, _ = _examples(cfg, "tuna", 2, tok, 0, lambda: None, said.append)
    changed = [(a, b) for a, b in zip(base, rows) if a != b]
    assert [(r.id, r.image, r.input_ids) for r in rows] == [(r.id, r.image, r.input_ids) for r in base]
    assert changed and any(f"existence_tags=0.5: {len(changed):,} rows' tags edited" in s for s in said)
    assert all(len(after.tags) <= cfg.model.num_tags and after.tags != before.tags for before, after in changed)
    baseline, _ = _examples(cfg, "baseline", 2, tok, 0, lambda: None, lambda s: None)
    assert baseline == _examples(load_recipe(SMOKE, over), "baseline", 2, tok, 0, lambda: None, lambda s: None)[0]
