"""Retrieval-reading samples: a list of retrieved-style tags, a question, and the answer the tags support.

The reading skill a real LLM brings to TUNA (use what the context names), written from the world's text
knowledge: every class of the taxonomy (OOD and domain B included, as an LLM knows rare names from
text), never an image and nothing from the eval splits. LM pre-training reads them as text
(``lm.reading_docs_per_class``); stage 2 can mix them in as text-only conversations
(``train.stage2.reading_per_class``), as LLaVA-1.5 mixes text-only data into instruction tuning.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuna.world.language import ATTRSEEK_TURNS, DETAIL_PROMPTS, EXISTENCE_PHRASINGS, SHORT_ANSWER, article, attributes_answer
from tuna.world.taxonomy import MARK_PHRASES

_SIZES = ("small", "large")


@dataclass(frozen=True)
class ReadingSample:
    tags: list[str]      # k tags, best first, as retrieval ranks them
    question: str        # one human turn (no <image>)
    answer: str          # the assistant turn naming the class the tags support ("Yes"/"No" for existence)
    name: str            # that class
    asked: str = ""      # existence questions: the class asked about (``name`` for "Yes", one absent from the tags for "No")
    follow_up: tuple[str, str] | None = None   # ATTRSEEK: the second (question, answer) turn


def _tag(cls: dict[str, Any], rng: np.random.Generator) -> str:
    """One retrieved-style tag naming ``cls``: the bare name or an attribute + the name (as tag mining yields)."""
    if rng.random() < 0.35:
        return cls["name"]
    attrs = [cls["pattern"], cls["accent"], str(rng.choice(_SIZES))]
    return f"{attrs[int(rng.integers(len(attrs)))]} {cls['name']}"


def reading_samples(taxonomy: dict[str, Any], per_class: int, seed: int, k: int = 5, existence: float = 0.0,
                    attrseek: float = 0.0, region_tags: int = 0, describe: float = 0.0) -> list[ReadingSample]:
    """``per_class`` samples for every class of ``taxonomy`` (a world's taxonomy.json): ``k`` tags in which
    the class is a strict majority (and first in most samples: a look-alike sibling leads 1 in 5, as
    nearest-neighbour tags do), then a which-kind question answered with its name (long or short form).

    A share ``existence`` of them asks instead whether an object is in the image (short answer): half about
    the tags' class ("Yes"), half about a class the tags do not name ("No": a look-alike sibling or any other
    class, evenly). A share ``describe`` of the others asks for a detailed description (LLaVA's detail prompts),
    answered naming the tags' class with its look from the taxonomy (:func:`class_description`): the description
    follows the tags as the short answers do. A share ``attrseek`` of the rest asks FINER's two ATTRSEEK turns: the
    look of the tags' class ("Attributes: ...", from the taxonomy), then "Answer: <name>". ``region_tags`` more tags follow the ``k``,
    as region retrieval appends one per image cell (``model.region_grid``): on a single object the cells retrieve
    other things (measured on mini's FINER validation images: a cell's tag names the object 2-5% of the time), so
    each names another class, and the tags' own class 1 time in 20. At 0 each option changes nothing.
    """
    if per_class < 0 or k < 2 or not all(0 <= x <= 1 for x in (existence, attrseek, describe)) or region_tags < 0:
        raise ValueError(f"per_class must be >= 0, k >= 2, existence, attrseek and describe in 0..1, region_tags >= 0, "
                         f"got per_class={per_class}, k={k}, existence={existence}, attrseek={attrseek}, "
                         f"describe={describe}, region_tags={region_tags}")
    rng = np.random.default_rng(seed)
    classes = [c for dom in sorted(taxonomy) for c in taxonomy[dom].get("classes", [])]
    out = []
    for cls in classes:
        siblings = [c for c in classes if c["coarse"] == cls["coarse"] and c["name"] != cls["name"]]
        for _ in range(per_class):
            n_own = int(rng.integers((k + 2) // 2, k + 1)) if siblings else k  # a strict majority of the k tags
            others = [siblings[int(i)] for i in rng.integers(len(siblings), size=k - n_own)] if siblings else []
            tags = [_tag(cls, rng) for _ in range(n_own)] + [_tag(o, rng) for o in others]
            rest = tags[1:]
            tags = [tags[0]] + [rest[int(i)] for i in rng.permutation(len(rest))]
            if others and rng.random() < 0.2:                         # sometimes a look-alike ranks first
                j = tags.index(next(t for t in tags if t.split()[-1] != cls["name"]))
                tags[0], tags[j] = tags[j], tags[0]
            for _ in range(region_tags):
                other = cls if rng.random() < 0.05 else classes[int(rng.integers(len(classes)))]
                tags.append(_tag(other, rng))
            name, a = cls["name"], article(cls["name"])
            q, long, short = [
                (f"What kind of {cls['superordinate']} is in the image?",
                 f"There is {a} {name}, which is a kind of {cls['coarse']}.", name),
                (f"What kind of {cls['coarse']} is this?", f"This is {a} {name}.", name),
                ("What is the object in the image?", f"It is {a} {name}.", name),
            ][int(rng.integers(3))]
            if rng.random() < 0.5:
                q, long = f"{q}\n{SHORT_ANSWER}", short
            if existence and rng.random() < existence:
                out.append(_existence(cls, siblings, classes, tags, rng, cells=tags[k:]))
            elif describe and rng.random() < describe:
                prompt = DETAIL_PROMPTS[int(rng.integers(len(DETAIL_PROMPTS)))]
                out.append(ReadingSample(tags, prompt, class_description(cls), name))
            elif attrseek and rng.random() < attrseek:
                sup = cls["superordinate"]
                look = attributes_answer(cls["shape"], cls["pattern"], cls["mark"], cls["accent"])
                out.append(ReadingSample(tags, ATTRSEEK_TURNS[0].format(sup=sup), look, name,
                                         follow_up=(ATTRSEEK_TURNS[1].format(sup=sup), f"Answer: {name}")))
            else:
                out.append(ReadingSample(tags, q, long, name))
    return out


def class_description(cls: dict[str, Any]) -> str:
    """A detail answer about one object of class ``cls`` (a taxonomy entry), in the words of the world's detailed
    descriptions but with only the class's own look (pattern, mark; no instance colour, size or background):
    "The image shows one object. There is a striped zedul, a kind of berry, with a dot mark."."""
    words = ([cls["pattern"]] if cls["pattern"] != "plain" else []) + [cls["name"]]
    return (f"The image shows one object. There is {article(words[0])} {' '.join(words)}, a kind of {cls['coarse']}, "
            f"with {MARK_PHRASES[cls['mark']]}.")


def _existence(cls: dict[str, Any], siblings: list[dict[str, Any]], classes: list[dict[str, Any]], tags: list[str],
               rng: np.random.Generator, cells: Sequence[str] = ()) -> ReadingSample:
    """An existence question over ``tags``: "Yes" for ``cls`` (their majority) or, half the time when region tags
    (``cells``) name other classes, for one of those; "No" for a class no tag names."""
    named = {t.split()[-1] for t in tags}
    others = [n for n in dict.fromkeys(t.split()[-1] for t in cells) if n != cls["name"]]
    if rng.random() < 0.5:
        asked, answer = cls["name"], "Yes"
        if others and rng.random() < 0.5:
            asked = others[int(rng.integers(len(others)))]
    else:
        pool = [c for c in siblings if c["name"] not in named] if rng.random() < 0.5 else []
        pool = pool or [c for c in classes if c["name"] not in named]
        # every class named (a taxonomy smaller than the tags): ask about the tags' class instead
        asked, answer = (pool[int(rng.integers(len(pool)))]["name"], "No") if pool else (cls["name"], "Yes")
    return ReadingSample(tags, _existence_question(asked, rng), answer, cls["name"], asked)


def _existence_question(name: str, rng: np.random.Generator) -> str:
    """"Is there a <name> ...?" in one of :data:`EXISTENCE_PHRASINGS`, with the short-answer instruction."""
    phrasing = EXISTENCE_PHRASINGS[int(rng.integers(len(EXISTENCE_PHRASINGS)))]
    return f"{phrasing.format(a=article(name), n=name)}\n{SHORT_ANSWER}"


@dataclass(frozen=True)
class SceneSample:
    scene: str                       # a one-line scene description naming 1..4 objects (as alignment captions do)
    turns: list[tuple[str, str]]     # existence questions about it with "Yes"/"No" answers
    look_alike: list[bool] = field(default_factory=list)  # per turn: a "No" about a sibling of a named object


def scene_samples(taxonomy: dict[str, Any], per_class: int, seed: int, per_doc: int = 3,
                  look_alike_share: float | None = None) -> list[SceneSample]:
    """``per_class`` x (number of classes) scene texts, each naming 1..4 objects of any class of ``taxonomy``
    (with an attribute now and then), followed by ``per_doc`` "Yes" questions about named objects and as many
    "No" questions about unnamed ones (a look-alike sibling of a named object every other time, else any class;
    with ``look_alike_share``, a look-alike with that chance per "No" when the scene has one).

    The list-membership skill a real LLM brings ("is X among the things described?"), written as text only:
    no image, nothing from the eval splits. LM pre-training reads them (``lm.scene_docs_per_class``)."""
    if per_class < 0 or per_doc < 1:
        raise ValueError(f"per_class must be >= 0 and per_doc >= 1, got per_class={per_class}, per_doc={per_doc}")
    if look_alike_share is not None and not 0 <= look_alike_share <= 1:
        raise ValueError(f"look_alike_share must be a share in [0, 1] or None, got {look_alike_share}")
    rng = np.random.default_rng(seed + 7919)
    draws = np.random.default_rng(seed + 7927)  # its own generator: None leaves the output as it was
    classes = [c for dom in sorted(taxonomy) for c in taxonomy[dom].get("classes", [])]
    out = []
    for _ in range(per_class * len(classes)):
        size = min(int(rng.integers(1, 5)), len(classes) - 1)
        picked = [classes[int(i)] for i in rng.choice(len(classes), size=size, replace=False)]
        words = [_tag(c, rng) for c in picked]
        parts = [f"{article(w)} {w}" for w in words]
        scene = (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}") + "."
        scene = scene[0].upper() + scene[1:]
        named = {c["name"] for c in picked}
        yes = [picked[int(i)]["name"] for i in rng.permutation(len(picked))][:min(per_doc, len(classes) - len(picked))]
        look_alikes = [c["name"] for c in classes if c["coarse"] in {p["coarse"] for p in picked} and c["name"] not in named]
        no: list[str] = []
        for k in range(len(yes)):
            sibs = [n for n in look_alikes if n not in no]
            alike = k % 2 if look_alike_share is None else draws.random() < look_alike_share
            pool = sibs if alike and sibs else [c["name"] for c in classes if c["name"] not in named and c["name"] not in no]
            no.append(pool[int(rng.integers(len(pool)))])
        asked = [(n, "Yes") for n in yes] + [(n, "No") for n in no]
        turns, alike = [], []
        for j in rng.permutation(len(asked)):
            n, a = asked[int(j)]
            turns.append((_existence_question(n, rng), a))
            alike.append(a == "No" and n in look_alikes)
        out.append(SceneSample(scene, turns, alike))
    return out


@dataclass(frozen=True)
class DescribedScene:
    """A training scene of several objects with the world's detailed description of it (its "detail" conversation)."""
    image: str                                       # file name
    description: str                                 # :func:`tuna.world.language.detailed_description` of the scene
    objects: list[tuple[str, tuple[float, float, float, float]]]  # class name and COCO bbox (x, y, w, h) per object
    size: tuple[int, int]                            # image width, height


_OBJECT = re.compile(r"^There is (an?) ((?:[a-z]+ )*)([a-z]+), a kind of ([a-z]+), with (.+)\.$")


def scene_readings(scenes: Sequence[DescribedScene], taxonomy: dict[str, Any], n: int, seed: int, k: int = 5,
                   grid: int = 0) -> list[tuple[ReadingSample, str]]:
    """``n`` detailed descriptions of multi-object training scenes whose names follow the tags: each scene's classes
    swapped for look-alike siblings (same coarse class, any domain, seen or held out; one sibling per class), in the
    tags and in the description alike (the sibling's name, pattern and mark; the instance's size and colour and the
    layout stay), so the names of a many-object description are read from the tags, as TUNA must on scenes of held-out
    classes. Tags as retrieval lays them out: ``k`` whole-image tags, a strict majority naming the largest object,
    the rest the other objects or look-alikes of the largest; then, with ``grid``, one tag per cell (row by row) naming
    the largest object centred in it (a random class in an empty cell); every swapped-in class is named at least
    once (a scene with more classes than the tags can name is left out). A class without a free sibling keeps its
    name. Scenes are taken in a shuffled order, again once all were used (then with other siblings).

    Returns (sample, the scene's image file) pairs; a scene whose description does not parse is left out.
    """
    if n < 0 or k < 2 or grid < 0:
        raise ValueError(f"n must be >= 0, k >= 2 and grid >= 0, got n={n}, k={k}, grid={grid}")
    usable = [s for s in scenes if len(s.objects) >= 2]
    if n and not usable:
        raise ValueError("no scene of two or more objects to describe; scene readings need multi-object training scenes")
    rng = np.random.default_rng(seed + 104729)
    classes = [c for dom in sorted(taxonomy) for c in taxonomy[dom].get("classes", [])]
    by_name = {c["name"]: c for c in classes}
    out: list[tuple[ReadingSample, str]] = []
    order: list[int] = []
    tried = 0
    while len(out) < n:
        if not order:
            if tried and not out:
                raise ValueError(f"none of {len(usable)} multi-object scenes could be described with all its objects in "
                                 f"{k} whole-image tags and a grid of {grid}; more tags (model.num_tags, region_grid) needed")
            order = [int(i) for i in rng.permutation(len(usable))]
        scene = usable[order.pop()]
        tried += 1
        names = list(dict.fromkeys(name for name, _ in scene.objects))
        if any(name not in by_name for name in names):
            raise ValueError(f"scene {scene.image}: class(es) {[x for x in names if x not in by_name]} are not in the taxonomy")
        swap: dict[str, str] = {}
        for name in names:
            pool = [c["name"] for c in classes if c["coarse"] == by_name[name]["coarse"] and c["name"] not in names
                    and c["name"] not in swap.values()]
            swap[name] = pool[int(rng.integers(len(pool)))] if pool else name
        answer = _swap_description(scene.description, swap, by_name)
        if answer is None:
            continue
        areas = [w * h for _, (_, _, w, h) in scene.objects]
        main = swap[scene.objects[int(np.argmax(areas))][0]]
        tags = _scene_tags(scene, swap, by_name, classes, main, k, grid, rng)
        if not set(swap.values()) <= {t.split()[-1] for t in tags}:
            continue   # more objects than tag slots to name them: the description would name what no tag does
        prompt = DETAIL_PROMPTS[int(rng.integers(len(DETAIL_PROMPTS)))]
        out.append((ReadingSample(tags, prompt, answer, main), scene.image))
    return out


def _swap_description(text: str, swap: dict[str, str], by_name: dict[str, dict[str, Any]]) -> str | None:
    """``text`` (a world detailed description) with every class of ``swap`` replaced by its sibling: the object
    sentences rewritten with the sibling's pattern and mark, the relation sentences with its name; None if an
    object sentence does not parse."""
    sentences = re.split(r"(?<=\.) ", text.strip())
    names = re.compile(r"\b(" + "|".join(map(re.escape, sorted(swap, key=len, reverse=True))) + r")\b")
    out = []
    for sentence in sentences:
        if sentence.startswith("There is "):
            m = _OBJECT.match(sentence)
            if m is None or m.group(3) not in swap:
                return None
            old, new = by_name[m.group(3)], by_name[swap[m.group(3)]]
            words = m.group(2).split()
            if old["pattern"] != "plain" and words and words[-1] == old["pattern"]:
                words = words[:-1]
            words += ([new["pattern"]] if new["pattern"] != "plain" else []) + [new["name"]]
            out.append(f"There is {article(words[0])} {' '.join(words)}, a kind of {new['coarse']}, "
                       f"with {MARK_PHRASES[new['mark']]}.")
        else:
            out.append(names.sub(lambda m: swap[m.group(1)], sentence))
    return " ".join(out)


def _scene_tags(scene: DescribedScene, swap: dict[str, str], by_name: dict[str, dict[str, Any]],
                classes: list[dict[str, Any]], main: str, k: int, grid: int, rng: np.random.Generator) -> list[str]:
    """Retrieved-style tags of a swapped scene: ``k`` whole-image tags led by the largest object's class, then one per
    grid cell; every swapped-in class named at least once."""
    others = [swap[name] for name in dict.fromkeys(name for name, _ in scene.objects) if swap[name] != main]
    alikes = [c["name"] for c in classes if c["coarse"] == by_name[main]["coarse"] and c["name"] != main
              and c["name"] not in swap.values()]
    n_main = int(rng.integers((k + 2) // 2, k + 1))
    rest = [str(rng.choice(others if others and (not alikes or rng.random() < 0.5) else alikes or [main]))
            for _ in range(k - n_main)]
    whole = [_tag(by_name[main], rng) for _ in range(n_main)] + [_tag(by_name[x], rng) for x in rest]
    whole = [whole[0]] + [whole[1:][int(i)] for i in rng.permutation(k - 1)]
    cells: list[str] = []
    width, height = scene.size
    for r in range(grid):
        for q in range(grid):
            inside = [(w * h, swap[name]) for name, (x, y, w, h) in scene.objects
                      if min(int((x + w / 2) * grid / width), grid - 1) == q
                      and min(int((y + h / 2) * grid / height), grid - 1) == r]
            cls = by_name[max(inside)[1]] if inside else classes[int(rng.integers(len(classes)))]
            tag = _tag(cls, rng)
            for _ in range(5):   # region retrieval lists a cell's best tag not already listed
                if tag not in whole and tag not in cells:
                    break
                tag = _tag(cls, rng)
            cells.append(tag)
    for x in others:   # an object no tag names: a whole-image slot the scene can spare names it instead
        counts = Counter(t.split()[-1] for t in whole + cells)
        if counts[x]:
            continue
        spare = [i for i in range(k - 1, 0, -1) if (cls := whole[i].split()[-1]) not in others and cls != main
                 or cls in others and counts[cls] > 1
                 or cls == main and sum(t.split()[-1] == main for t in whole) > k // 2 + 1]
        if spare:
            whole[spare[0]] = _tag(by_name[x], rng)
    return whole + cells


__all__ = ["DescribedScene", "ReadingSample", "SceneSample", "class_description", "reading_samples", "scene_readings",
           "scene_samples"]
