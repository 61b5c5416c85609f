"""Benchmark questions built from scenes by the benchmarks' own rules: POPE and MME-style yes/no pairs."""

from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np

from tuna.world.language import NUMBER_WORDS, article, plural
from tuna.world.scene import Scene

POPE_SPLITS = ("random", "popular", "adversarial")
MME_TASKS = ("existence", "count", "position", "color")
POPE_PER_IMAGE = 3  # yes questions (and as many no questions) per image


def pope_statistics(scenes: list[Scene]) -> tuple[Counter[str], dict[str, Counter[str]]]:
    """Object frequency and pairwise co-occurrence over a split's ground truth (what POPE ranks by)."""
    freq: Counter[str] = Counter()
    cooc: dict[str, Counter[str]] = {}
    for scene in scenes:
        names = scene.class_names
        freq.update(names)
        for a, b in permutations(names, 2):
            cooc.setdefault(a, Counter())[b] += 1
    return freq, cooc


def pope_negatives(
    split: str, gt: list[str], vocabulary: list[str], freq: Counter[str], cooc: dict[str, Counter[str]],
    rng: np.random.Generator, k: int = POPE_PER_IMAGE,
) -> list[str]:
    """``k`` objects absent from the image, chosen by POPE's rule for ``split``.

    random: uniform over absent objects; popular: the most frequent objects of the dataset that are
    absent; adversarial: the objects that co-occur most with the image's objects and are absent.
    Ties break by frequency, then by name, so the choice is deterministic.
    """
    absent = [v for v in vocabulary if v not in gt]
    if len(absent) < k:
        raise ValueError(f"only {len(absent)} absent objects to choose {k} negatives from")
    if split == "random":
        return [absent[int(i)] for i in rng.choice(len(absent), size=k, replace=False)]
    if split == "popular":
        return sorted(absent, key=lambda v: (-freq[v], v))[:k]
    if split == "adversarial":
        score = {v: sum(cooc.get(g, Counter())[v] for g in gt) for v in absent}
        return sorted(absent, key=lambda v: (-score[v], -freq[v], v))[:k]
    raise ValueError(f"unknown POPE split {split!r}; use one of {', '.join(POPE_SPLITS)}")


def pope_questions(
    scenes: list[Scene], image_names: list[str], vocabulary: list[str], seed: int, split: str
) -> list[dict[str, object]]:
    """POPE rows for one split: per image 3 yes (present objects) and 3 no, alternating."""
    freq, cooc = pope_statistics(scenes)
    rows: list[dict[str, object]] = []
    for n, (scene, image) in enumerate(zip(scenes, image_names)):
        rng = np.random.default_rng([seed, 9100 + POPE_SPLITS.index(split), n])
        gt = scene.class_names
        yes = [gt[int(i)] for i in rng.choice(len(gt), size=POPE_PER_IMAGE, replace=False)]
        no = pope_negatives(split, gt, vocabulary, freq, cooc, rng)
        for y, q in zip(yes, no):
            for obj, label in ((y, "yes"), (q, "no")):
                rows.append({"question_id": len(rows) + 1, "image": image,
                             "text": f"Is there {article(obj)} {obj} in the image?", "label": label})
    return rows


def mme_pair(task: str, scene: Scene, vocabulary: list[str], colours: list[str], rng: np.random.Generator
             ) -> list[tuple[str, str]] | None:
    """Two (question, "Yes"|"No") pairs about ``scene`` for an MME-style subtask; None if the scene cannot support it."""
    suffix = " Please answer yes or no."
    names = scene.class_names
    if task == "existence":
        present = names[int(rng.integers(len(names)))]
        absent = [v for v in vocabulary if v not in names]
        no = absent[int(rng.integers(len(absent)))]
        return [(f"Is there {article(present)} {present} in this image?{suffix}", "Yes"),
                (f"Is there {article(no)} {no} in this image?{suffix}", "No")]
    if task == "count":
        name = names[int(rng.integers(len(names)))]
        c = scene.count(name)
        wrong = c + 1 if c == 1 or rng.random() < 0.5 else c - 1

        def ask(n: int) -> str:
            if n == 1:
                return f"Is there exactly one {name} in this image?{suffix}"
            return f"Are there {NUMBER_WORDS[n]} {plural(name)} in this image?{suffix}"
        return [(ask(c), "Yes"), (ask(wrong), "No")]
    if task == "position":
        rels = [(i, r, j) for i, r, j in scene.relations()
                if r in ("left of", "above") and scene.count(scene.objects[i].cls.name) == 1
                and scene.count(scene.objects[j].cls.name) == 1]
        if not rels:
            return None
        i, rel, j = rels[int(rng.integers(len(rels)))]
        a, b = scene.objects[i].cls.name, scene.objects[j].cls.name
        if rel == "left of":
            return [(f"Is the {a} to the left of the {b} in this image?{suffix}", "Yes"),
                    (f"Is the {a} to the right of the {b} in this image?{suffix}", "No")]
        return [(f"Is the {a} above the {b} in this image?{suffix}", "Yes"),
                (f"Is the {a} below the {b} in this image?{suffix}", "No")]
    if task == "color":
        single = [o for o in scene.objects if scene.count(o.cls.name) == 1]
        if not single:
            return None
        o = single[int(rng.integers(len(single)))]
        wrong = [c for c in colours if c != o.colour]
        w = wrong[int(rng.integers(len(wrong)))]
        return [(f"Is the {o.cls.name} {o.colour} in this image?{suffix}", "Yes"),
                (f"Is the {o.cls.name} {w} in this image?{suffix}", "No")]
    raise ValueError(f"unknown MME task {task!r}; use one of {', '.join(MME_TASKS)}")
