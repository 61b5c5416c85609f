"""POPE questions follow POPE's rules (recomputed from the ground truth); MME pairs and FINER labels are consistent."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from itertools import permutations

import numpy as np
import pytest

from support import World
from tuna.formats import coco_objects_by_image, load_coco, load_finer, load_mme, load_pope
from tuna.world.questions import MME_TASKS, POPE_PER_IMAGE, POPE_SPLITS, mme_pair, pope_negatives
from tuna.world.scene import Background, ObjectInstance, Scene
from tuna.world.taxonomy import COLOURS

QUESTION = re.compile(r"^Is there an? (\w+) in the image\?$")


def ground_truth(world: World, split: str) -> dict[str, list[str]]:
    """image file -> distinct objects, in first-appearance order (from the split's COCO instances)."""
    coco = load_coco(world.root / "eval" / "pope" / split / "instances.json")
    return {image: list(dict.fromkeys(names)) for image, names in coco_objects_by_image(coco).items()}


def questions(world: World, split: str, pope: str) -> dict[str, list[tuple[str, str]]]:
    """image file -> [(object, label), ...] in file order."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in load_pope(world.root / "eval" / "pope" / split / f"world_pope_{pope}.json"):
        m = QUESTION.match(row["text"])
        assert m, row["text"]
        out[row["image"]].append((m.group(1), row["label"]))
    return out


def statistics(gt: dict[str, list[str]]) -> tuple[Counter[str], dict[str, Counter[str]]]:
    """Object frequency (images containing it) and co-occurrence (images containing both), recomputed here."""
    freq: Counter[str] = Counter()
    cooc: dict[str, Counter[str]] = defaultdict(Counter)
    for names in gt.values():
        freq.update(set(names))
        for a, b in permutations(set(names), 2):
            cooc[a][b] += 1
    return freq, cooc


SPLITS = [(split, pope) for split in ("id", "ood") for pope in POPE_SPLITS]


# ----------------------------------------------------------------------------- every POPE file


@pytest.mark.parametrize("split, pope", SPLITS)
def test_three_yes_and_three_no_per_image(world: World, split: str, pope: str) -> None:
    gt = ground_truth(world, split)
    asked = questions(world, split, pope)
    assert set(asked) == set(gt)
    assert len(gt) == world.cfg.world.sizes.pope_images
    vocabulary = world.a_names
    for image, qa in asked.items():
        labels = [label for _, label in qa]
        assert labels == ["yes", "no"] * POPE_PER_IMAGE, image  # balanced and alternating, as POPE files are
        yes = [obj for obj, label in qa if label == "yes"]
        no = [obj for obj, label in qa if label == "no"]
        assert len(set(yes)) == len(set(no)) == 3
        assert set(yes) <= set(gt[image]), f"{image}: a 'yes' object is not in the image"
        assert not set(no) & set(gt[image]), f"{image}: a 'no' object is in the image"
        assert set(no) <= vocabulary


@pytest.mark.parametrize("split", ["id", "ood"])
def test_popular_negatives_are_the_most_frequent_absent_objects(world: World, split: str) -> None:
    gt = ground_truth(world, split)
    freq, _ = statistics(gt)
    vocabulary = sorted(world.a_names)
    for image, qa in questions(world, split, "popular").items():
        absent = [v for v in vocabulary if v not in gt[image]]
        expected = sorted(absent, key=lambda v: (-freq[v], v))[:3]
        assert [obj for obj, label in qa if label == "no"] == expected, image


@pytest.mark.parametrize("split", ["id", "ood"])
def test_adversarial_negatives_are_the_most_co_occurring_absent_objects(world: World, split: str) -> None:
    gt = ground_truth(world, split)
    freq, cooc = statistics(gt)
    vocabulary = sorted(world.a_names)
    differs_from_popular = 0
    popular = questions(world, split, "popular")
    for image, qa in questions(world, split, "adversarial").items():
        absent = [v for v in vocabulary if v not in gt[image]]
        score = {v: sum(cooc[g][v] for g in gt[image]) for v in absent}
        expected = sorted(absent, key=lambda v: (-score[v], -freq[v], v))[:3]
        got = [obj for obj, label in qa if label == "no"]
        assert got == expected, image
        differs_from_popular += got != [obj for obj, label in popular[image] if label == "no"]
    if split == "id":
        # Not vacuous: co-occurrence picks other negatives than frequency for some images. (In smoke's OOD split
        # only 4 classes ever appear, so at most one absent object has a non-zero score and both rules agree.)
        assert differs_from_popular, "adversarial negatives never differ from popular ones: the rules are not exercised"


@pytest.mark.parametrize("split", ["id", "ood"])
def test_random_negatives_are_absent_and_vary(world: World, split: str) -> None:
    gt = ground_truth(world, split)
    chosen = set()
    for image, qa in questions(world, split, "random").items():
        no = [obj for obj, label in qa if label == "no"]
        assert not set(no) & set(gt[image])
        chosen |= set(no)
    assert len(chosen) > 3


# ------------------------------------------------------------------------ pope_negatives, by hand


VOCAB = ["apple", "bolt", "crab", "dove", "eel", "fig", "gnu"]
FREQ = Counter({"apple": 5, "bolt": 1, "crab": 3, "dove": 3, "eel": 0, "fig": 2, "gnu": 2})
COOC = {"apple": Counter({"bolt": 2, "eel": 2, "fig": 1}), "fig": Counter({"gnu": 4, "bolt": 1})}


def negatives(split: str, gt: list[str], k: int = 3, seed: int = 0) -> list[str]:
    return pope_negatives(split, gt, VOCAB, FREQ, COOC, np.random.default_rng(seed), k)


def test_popular_by_hand() -> None:
    # Absent: bolt 1, crab 3, dove 3, eel 0, fig 2, gnu 2 -> crab, dove (tie by name), then fig before gnu.
    assert negatives("popular", ["apple"]) == ["crab", "dove", "fig"]
    assert negatives("popular", ["apple"], k=4) == ["crab", "dove", "fig", "gnu"]
    assert negatives("popular", ["crab", "dove"]) == ["apple", "fig", "gnu"]


def test_adversarial_by_hand() -> None:
    # Co-occurrence with apple: bolt 2, eel 2 (tie -> bolt, the more frequent), fig 1.
    assert negatives("adversarial", ["apple"]) == ["bolt", "eel", "fig"]
    # Scores add over the image's objects: with apple and fig, gnu 4, bolt 3, eel 2.
    assert negatives("adversarial", ["apple", "fig"]) == ["gnu", "bolt", "eel"]
    # No co-occurrence at all: falls back to frequency, then name.
    assert negatives("adversarial", ["dove"]) == ["apple", "crab", "fig"]


def test_random_by_hand() -> None:
    got = negatives("random", ["apple", "bolt"], seed=3)
    assert len(got) == len(set(got)) == 3
    assert not set(got) & {"apple", "bolt"} and set(got) <= set(VOCAB)
    assert got == negatives("random", ["apple", "bolt"], seed=3)  # seeded
    draws = {tuple(negatives("random", ["apple"], seed=s)) for s in range(20)}
    assert len(draws) > 1


def test_pope_negatives_refuse_impossible_requests() -> None:
    with pytest.raises(ValueError, match="only 2 absent"):
        negatives("popular", VOCAB[:5])
    with pytest.raises(ValueError, match="unknown POPE split"):
        negatives("hard", ["apple"])


# --------------------------------------------------------------------------------------------- MME


@pytest.mark.parametrize("split", ["id", "ood"])
def test_mme_has_one_yes_and_one_no_per_image(world: World, split: str) -> None:
    by_image: dict[tuple[str, str], list[str]] = defaultdict(list)
    items = load_mme(world.root / "eval" / "mme" / split)
    for item in items:
        by_image[item.task, item.image.name].append(item.answer)
    assert {task for task, _ in by_image} == set(MME_TASKS)
    for key, answers in by_image.items():
        assert sorted(answers) == ["No", "Yes"], key
    # Each pair asks two different questions.
    questions_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for item in items:
        questions_of[item.task, item.image.name].add(item.question)
    assert all(len(q) == 2 for q in questions_of.values())


def scene_of(world: World, counts: dict[int, int]) -> Scene:
    """A hand-built scene: ``counts[i]`` instances of domain A's class ``i``, in a row."""
    objects = []
    for i, n in counts.items():
        for _ in range(n):
            objects.append(ObjectInstance(cls=world.a.classes[i], colour="red", size="small",
                                          cx=10.0 + 20 * len(objects), cy=32.0, r=8.0, rotation=0.0))
    return Scene(key="hand", size=64, objects=tuple(objects), background=Background("noise", (0, 0, 0), (9, 9, 9), 0.5))


@pytest.mark.parametrize("count", [1, 2, 6])
def test_mme_count_pair(world: World, count: int) -> None:
    """Up to 6 objects of a kind (objects_per_image max); the wrong count may be one more."""
    scene = scene_of(world, {0: count})
    name = world.a.classes[0].name
    wrong_counts = set()
    for seed in range(16):
        pair = mme_pair("count", scene, sorted(world.a_names), list(COLOURS), np.random.default_rng(seed))
        assert pair is not None and [a for _, a in pair] == ["Yes", "No"]
        (yes, _), (no, _) = pair
        assert name in yes or f"{name}s" in yes or f"{name}es" in yes
        assert yes != no
        wrong_counts.add(no)
    if count == 1:
        assert "exactly one" in pair[0][0] and len(wrong_counts) == 1 and "two" in wrong_counts.pop()
    if count == 6:
        assert any("seven" in q for q in wrong_counts) and any("five" in q for q in wrong_counts)


def test_mme_existence_and_position_pairs(world: World) -> None:
    scene = scene_of(world, {0: 1, 1: 1})
    a, b = world.a.classes[0].name, world.a.classes[1].name
    pair = mme_pair("existence", scene, sorted(world.a_names), list(COLOURS), np.random.default_rng(0))
    assert pair[0][1] == "Yes" and (a in pair[0][0] or b in pair[0][0])
    absent = [n for n in world.a_names if n in pair[1][0]]
    assert pair[1][1] == "No" and len(absent) == 1 and absent[0] not in (a, b)
    pair = mme_pair("position", scene, sorted(world.a_names), list(COLOURS), np.random.default_rng(0))
    assert pair == [(f"Is the {a} to the left of the {b} in this image? Please answer yes or no.", "Yes"),
                    (f"Is the {a} to the right of the {b} in this image? Please answer yes or no.", "No")]
    assert mme_pair("position", scene_of(world, {0: 1}), [], list(COLOURS), np.random.default_rng(0)) is None


# ------------------------------------------------------------------------------------------- FINER


@pytest.mark.parametrize("split", ["id", "ood", "b"])
def test_finer_labels_match_the_taxonomy(world: World, split: str) -> None:
    tax = world.b if split == "b" else world.a
    for row in load_finer(world.root / "eval" / "finer" / split / "finer.jsonl"):
        cls = tax.by_name(row["fine-level-lbl"])
        assert row["coarse-level-lbl"] == cls.coarse
        assert row["basic-level-lbl"] == cls.superordinate
        assert row["attributes"] == cls.attributes
        assert row["domain"] == cls.domain == ("B" if split == "b" else "A")
        assert row.get("brand") == cls.brand
        assert cls.ood == (split == "ood")
        inst = row["instance-attributes"]
        assert inst["pattern"] == cls.pattern and inst["size"] == "large"
        assert inst["colour"] != cls.accent
