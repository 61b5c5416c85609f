"""The tag rules on crafted captions, with the real spaCy pipeline (no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuna.cli import main
from tuna.errors import TunaError
from tuna.recipe import MineConfig
from tuna.tags.miner import CaptionTags, ModelNotInstalled, TagMiner, mine_captions


def one(miner: TagMiner, caption: str) -> CaptionTags:
    (tags,) = miner.mine([caption])
    return tags


def test_attributes_attach_to_their_own_noun(miner: TagMiner) -> None:
    t = one(miner, "a striped purple mangosteen and a small zedul")
    assert t.objects == ["mangosteen", "zedul"]
    assert t.attributes == ["striped", "purple", "small"]
    assert t.pairs == [("striped", "mangosteen"), ("purple", "mangosteen"), ("small", "zedul")]
    assert t.tags == ["mangosteen", "zedul", "striped mangosteen", "purple mangosteen", "small zedul"]


def test_invented_nouns_mis_tagged_by_spacy_still_heads(miner: TagMiner) -> None:
    # spaCy tags these pseudo-words JJ/RB/IN/NNP in this position; the phrase rules do not depend on it.
    t = one(miner, "a naimosan and a blue ringed naimosan , isolated")
    assert t.objects == ["naimosan"]
    assert set(t.pairs) == {("blue", "naimosan"), ("ringed", "naimosan")}
    t = one(miner, "an orange ringed quarei, a ringed quarei and a small gray ringed quarei")
    assert t.objects == ["quarei"]
    assert set(t.attributes) == {"orange", "ringed", "small", "gray"}
    t = one(miner, "a small purple naimosan and a crosshatched zenai")
    assert t.pairs == [("small", "naimosan"), ("purple", "naimosan"), ("crosshatched", "zenai")]


def test_compounds_form_one_object(miner: TagMiner) -> None:
    t = one(miner, "a red wine glass on a wooden coffee table")
    assert t.objects == ["wine glass", "coffee table"]
    assert ("red", "wine glass") in t.pairs and ("wooden", "coffee table") in t.pairs
    assert "red wine glass" in t.tags


def test_entities_kept_and_not_objects(miner: TagMiner) -> None:
    t = one(miner, "a blue tunic by Zolvar in Port Ashby")
    assert t.objects == ["tunic"]
    assert t.entities == ["zolvar", "port ashby"]
    assert t.tags[-2:] == ["zolvar", "port ashby"]
    t = one(miner, "a medium gray megleix photographed by lena brisco in mirefield")  # lowercased alt-text
    assert t.objects == ["megleix"]
    assert t.entities == ["lena brisco", "mirefield"]
    assert one(miner, "a red tunic from the Zolvar collection").entities == ["zolvar"]
    assert one(miner, "a blue tunic , zolvar store").entities == ["zolvar"]
    t = one(miner, "Actor John Smith attends the premiere in Los Angeles")
    assert "john smith" in t.entities and "los angeles" in t.entities
    assert "actor" in t.objects and "john smith" not in t.objects


def test_generic_words_dropped(miner: TagMiner) -> None:
    t = one(miner, "stock photo of a close-up view of a zedul on a textured background - free image")
    assert t.objects == ["zedul"] and t.tags == ["zedul"]
    t = one(miner, "illustration : a dotted pivin for sale , isolated")
    assert t.tags == ["pivin", "dotted pivin"]
    assert one(miner, "vector image of a picture").tags == []


def test_plain_english_captions(miner: TagMiner) -> None:
    assert one(miner, "A man riding a horse on the beach at sunset.").objects == ["man", "horse", "beach", "sunset"]
    t = one(miner, "the dog runs quickly towards the old red barn")
    assert t.objects == ["dog", "barn"] and t.pairs == [("old", "barn"), ("red", "barn")]
    t = one(miner, "There is a small teal ringed mabrutol, a kind of wrench, with no mark.")
    assert t.objects == ["mabrutol", "wrench"]  # "no mark" names what is absent


@pytest.mark.parametrize("caption, objects", [
    ("two red zeduls and three berries", ["zedul", "berry"]),
    ("red zeduls on a table", ["zedul", "table"]),
    ("boxes of glasses next to the buses", ["box", "glass", "bus"]),
    ("children with puppies and knives", ["child", "puppy", "knife"]),
    ("a kouzaines", ["kouzaines"]),          # a singular determiner wins over the -s ending
    ("a glass and a bus", ["glass", "bus"]),
])
def test_plurals_normalised_to_singular(miner: TagMiner, caption: str, objects: list[str]) -> None:
    assert one(miner, caption).objects == objects


def test_singular_rules(miner: TagMiner) -> None:
    assert [miner.singular(w) for w in ("zeduls", "berries", "boxes", "vases", "glasses", "mice", "bigeis", "kouzaineses")] == [
        "zedul", "berry", "box", "vase", "glass", "mouse", "bigei", "kouzaines"]


def test_lowercase_dedup_and_deterministic_order(miner: TagMiner) -> None:
    caption = "A Small Zedul, a pivin, a small zedul and a PIVIN"
    first = one(miner, caption)
    assert first.objects == ["zedul", "pivin"]
    assert first.tags == ["zedul", "pivin", "small zedul"]
    assert one(miner, caption) == first


def test_streams_in_input_order_across_batches() -> None:
    captions = [f"a red zedul and a {c} pivin" for c in ("blue", "green", "teal")] * 5 + ["", "nothing here"]
    out = mine_captions(captions, MineConfig(batch_size=4))
    assert len(out) == len(captions)
    assert [o.tags[-1] for o in out[:3]] == ["blue pivin", "green pivin", "teal pivin"]
    assert out[-2] == CaptionTags()


def test_missing_spacy_model_names_model_and_fix() -> None:
    with pytest.raises(ModelNotInstalled) as err:
        TagMiner(MineConfig(spacy_model="en_core_web_nonexistent"))
    assert isinstance(err.value, TunaError)
    msg = str(err.value)
    assert "en_core_web_nonexistent" in msg and "pip install" in msg and "\n" not in msg


def test_cli_mine_reports_missing_model_in_one_line(tmp_path, capsys) -> None:
    smoke = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
    code = main(["mine", "--config", str(smoke), f"run.data_dir={tmp_path}", "mine.spacy_model=en_core_web_nonexistent"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "en_core_web_nonexistent" in err
