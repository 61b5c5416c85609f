"""Held-out (OOD) and domain-B classes stay out of the training sets and are known to the web and text corpora."""

from __future__ import annotations

import json

import pytest

from support import World, mentions, words
from tuna.errors import CorruptSample
from tuna.formats import coco_objects_by_image, iter_text, iter_web, load_coco, load_finer, load_llava, load_mme
from tuna.world.taxonomy import SHAPES


def training_text(world: World, rel: str) -> list[str]:
    """Every turn of a LLaVA file, human and gpt."""
    return [t["value"] for r in load_llava(world.root / rel) for t in r.conversations]


def training_objects(world: World, folder: str) -> set[str]:
    coco = load_coco(world.root / folder / "instances.json")
    return {name for names in coco_objects_by_image(coco).values() for name in names}


TRAINING = [("alignment", "alignment/pretrain.json"), ("instruction", "instruction/instruct.json")]


# --------------------------------------------------------------------------------------- taxonomy


def test_taxonomy_levels_and_held_out_classes(world: World) -> None:
    a, cfg = world.a, world.cfg.world.taxonomy
    assert len(a.classes) == cfg.num_fine
    assert len(a.ood_classes) == cfg.num_ood == world.manifest["classes"]["A_ood"]
    assert sorted(world.manifest["ood_classes"]) == sorted(world.ood_names)
    assert len(a.superordinate_names) == cfg.superordinates
    assert len(a.coarse_names) == cfg.num_coarse
    for coarse in a.coarse_names:
        members = [c for c in a.classes if c.coarse == coarse]
        assert len(members) == cfg.fine_per_coarse
        assert any(c.ood for c in members), f"coarse class {coarse} has no held-out fine class"
        assert any(not c.ood for c in members), f"coarse class {coarse} has no seen fine class"
        assert len({c.superordinate for c in members}) == 1
    assert not any(c.ood for c in world.b.classes)


@pytest.mark.parametrize("domain", ["A", "B"])
def test_siblings_share_a_shape_and_differ_in_pattern(world: World, domain: str) -> None:
    tax = world.a if domain == "A" else world.b
    for cls in tax.classes:
        sibs = tax.siblings(cls)
        assert sibs, f"{cls.name} has no sibling"
        for s in sibs:
            assert s.shape == cls.shape, (cls.name, s.name)
            assert s.pattern != cls.pattern, (cls.name, s.name)


def test_coarse_classes_have_distinct_shapes_across_domains(world: World) -> None:
    shape_of = {(c.domain, c.coarse): c.shape for c in world.a.classes + world.b.classes}
    assert len(set(shape_of.values())) == len(shape_of)
    assert set(shape_of.values()) <= set(SHAPES)


def test_names_are_unique_and_domain_b_has_brands(world: World) -> None:
    names = [c.name for c in world.a.classes + world.b.classes]
    assert len(names) == len(set(names))
    ids = [c.id for c in world.a.classes + world.b.classes]
    assert len(ids) == len(set(ids))
    assert all(c.brand for c in world.b.classes)
    assert all(c.brand is None for c in world.a.classes)
    # Class names are single lower-case words, so tokenising text finds them.
    assert all(words(n) == {n} for n in names)


# ------------------------------------------------------------------------ training sets: ID only


@pytest.mark.parametrize("folder, rel", TRAINING)
def test_no_held_out_or_domain_b_name_in_training_text(world: World, folder: str, rel: str) -> None:
    every = world.a_names | world.b_names
    seen: set[str] = set()
    tokens: set[str] = set()
    for text in training_text(world, rel):
        seen |= mentions(text, every)
        tokens |= words(text)
    assert not seen & world.ood_names, f"held-out classes named in {rel}: {seen & world.ood_names}"
    assert not seen & world.b_names, f"domain-B classes named in {rel}: {seen & world.b_names}"
    assert not tokens & {c.brand.lower() for c in world.b.classes}
    # The check is not vacuous: every seen class is named there.
    assert seen == world.id_names


@pytest.mark.parametrize("folder, rel", TRAINING)
def test_no_held_out_or_domain_b_object_in_training_annotations(world: World, folder: str, rel: str) -> None:
    objects = training_objects(world, folder)
    assert objects <= world.id_names
    assert objects == world.id_names


def test_instruction_negatives_are_seen_classes(world: World) -> None:
    """'Is there a X?' -> 'No' questions ask only about seen classes."""
    rows = json.loads((world.root / "instruction" / "instruct.json").read_text())
    asked = set()
    for r in rows:
        for t in r["conversations"]:
            if t["from"] == "human" and "Is there" in t["value"]:
                asked |= mentions(t["value"], world.a_names | world.b_names)
    assert asked and asked <= world.id_names


# -------------------------------------------------------------------------- web and text corpora


def test_every_held_out_class_is_in_web_corpus_a(world: World) -> None:
    in_meta: set[str] = set()
    in_captions: set[str] = set()
    for s in iter_web(world.root / "web" / "A"):
        in_meta |= set(s.meta["objects"])
        try:
            in_captions |= mentions(s.text(), world.a_names | world.b_names)
        except CorruptSample:
            pass
    assert world.ood_names <= in_meta
    assert world.ood_names <= in_captions, f"held-out classes never named in alt-text: {world.ood_names - in_captions}"
    assert in_meta == world.a_names  # all classes of domain A, seen and held out
    assert not in_captions & world.b_names


def test_web_corpus_b_holds_domain_b_only(world: World) -> None:
    in_meta: set[str] = set()
    in_captions: set[str] = set()
    for s in iter_web(world.root / "web" / "B"):
        in_meta |= set(s.meta["objects"])
        in_captions |= mentions(s.text(), world.a_names | world.b_names)
    assert in_meta == world.b_names
    assert not in_captions & world.a_names


def test_text_corpus_knows_every_class_with_its_parents(world: World) -> None:
    docs = [words(d) for d in iter_text(world.root / "text" / "corpus.jsonl")]
    vocabulary = set().union(*docs)
    assert world.ood_names <= vocabulary
    assert world.a_names | world.b_names <= vocabulary
    for cls in world.a.classes + world.b.classes:
        about = [d for d in docs if cls.name in d]
        assert about, cls.name
        assert any(cls.coarse in d for d in about), f"{cls.name}: never next to its coarse class {cls.coarse}"
        assert any(cls.superordinate in d for d in about), f"{cls.name}: never next to {cls.superordinate}"
        if cls.brand:
            assert any(cls.brand.lower() in d for d in about), f"{cls.name}: never next to its brand {cls.brand}"


# ----------------------------------------------------------------------------------- eval splits


@pytest.mark.parametrize("kind", ["pope", "captions"])
def test_eval_id_and_ood_splits_hold_their_classes(world: World, kind: str) -> None:
    for split, expected in (("id", world.id_names), ("ood", world.ood_names)):
        coco = load_coco(world.root / "eval" / kind / split / "instances.json")
        objects = {n for names in coco_objects_by_image(coco).values() for n in names}
        assert objects <= expected, f"eval/{kind}/{split}: {objects - expected}"


def test_finer_splits_hold_their_classes(world: World) -> None:
    expected = {"id": world.id_names, "ood": world.ood_names, "b": world.b_names}
    for split, names in expected.items():
        labels = {r["fine-level-lbl"] for r in load_finer(world.root / "eval" / "finer" / split / "finer.jsonl")}
        assert labels == names, split  # classes are taken in turn, so each split covers its pool


def test_mme_splits_ask_about_their_classes(world: World) -> None:
    for split, own in (("id", world.id_names), ("ood", world.ood_names)):
        items = load_mme(world.root / "eval" / "mme" / split)
        for item in items:
            named = mentions(item.question, world.a_names | world.b_names)
            assert named, item.question
            if item.task == "existence" and item.answer == "No":
                assert named <= world.a_names  # an absent object: any class of domain A
            else:
                assert named <= own, f"mme/{split}/{item.task}: {item.question}"


def test_finer_validation_split_is_disjoint_from_the_eval_split(world: World) -> None:
    """world.sizes.finer_val: same classes per split as FINER's eval images, other images, other files."""
    import hashlib

    n = world.cfg.world.sizes.finer_val
    assert n > 0, "the smoke recipe generates a validation split"
    for split, names in (("id", None), ("ood", set(world.ood_names)), ("b", None)):
        val, ev = world.root / "val" / "finer" / split, world.root / "eval" / "finer" / split
        rows = load_finer(val / "finer.jsonl")
        assert len(rows) == n == world.manifest["counts"][f"finer_val_{split}"]
        if names is not None:
            assert {r["fine-level-lbl"] for r in rows} <= names
        digest = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (ev / "images").iterdir()}
        assert not digest & {hashlib.sha256((val / "images" / r["image"]).read_bytes()).hexdigest() for r in rows}
