"""Scene readings (``train.stage2.reading_scenes``): multi-object descriptions whose names follow swapped-in tags."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from tuna.world.reading import DescribedScene, scene_readings


def _cls(name: str, coarse: str, pattern: str = "plain", mark: str = "none") -> dict[str, Any]:
    return {"name": name, "coarse": coarse, "pattern": pattern, "mark": mark, "accent": "red", "superordinate": "thing"}


TAXONOMY = {"A": {"classes": [_cls("zedul", "berry", "wavy"), _cls("quarei", "berry", "ringed", "dot"),
                              _cls("brailusil", "berry"), _cls("zenai", "spade", "crosshatched"),
                              _cls("zhaizhuvu", "spade", "striped", "bar"), _cls("pivin", "beetle", "dotted")]}}
DESCRIPTION = ("The image shows two objects on a gradient background. There is a large white crosshatched zenai, "
               "a kind of spade, with no mark. There is a small yellow wavy zedul, a kind of berry, with no mark. "
               "The zenai is to the left of the zedul.")
SCENE = DescribedScene("a.png", DESCRIPTION, [("zenai", (4.0, 30.0, 40.0, 40.0)), ("zedul", (60.0, 60.0, 20.0, 20.0))],
                       (96, 96))


def test_a_scene_reading_names_look_alikes_in_the_tags_and_the_description() -> None:
    out = scene_readings([SCENE], TAXONOMY, 20, seed=0, k=5, grid=2)
    assert len(out) == 20 and {image for _, image in out} == {"a.png"}
    for sample, _ in out:
        spade, berry = re.findall(r"There is an? (?:[a-z]+ )*?([a-z]+), a kind of (?:spade|berry)", sample.answer)
        assert spade == "zhaizhuvu" and berry in ("quarei", "brailusil")       # the one sibling of the same coarse class
        assert "zenai" not in sample.answer and "zedul" not in sample.answer
        assert sample.answer.endswith(f"The zhaizhuvu is to the left of the {berry}.")
        assert "a large white striped zhaizhuvu, a kind of spade, with a dark bar." in sample.answer
        plain = "quarei" if berry == "quarei" else "brailusil"
        look = "ringed quarei, a kind of berry, with a central dot" if plain == "quarei" else "yellow brailusil, a kind of berry, with no mark"
        assert look in sample.answer                                            # the sibling's pattern and mark
        named = Counter(t.split()[-1] for t in sample.tags[:5])
        assert len(sample.tags) == 9 and named["zhaizhuvu"] >= 3                # the largest object: the whole image's majority
        assert sample.name == "zhaizhuvu" and berry in {t.split()[-1] for t in sample.tags}
        cells = [t.split()[-1] for t in sample.tags[5:]]
        assert cells[2] == "zhaizhuvu" and cells[3] == berry                    # centred in the lower-left / lower-right cells
        assert sample.question.endswith(("detail.", "everything.", "image."))
    assert len({s.answer for s, _ in out}) == 2                                 # both berry siblings get their turn


def test_scene_readings_are_reproducible_and_leave_out_what_they_cannot_read() -> None:
    single = DescribedScene("b.png", "The image shows one object on a grid background. There is a red pivin, a kind "
                            "of beetle, with no mark.", [("pivin", (0.0, 0.0, 9.0, 9.0))], (96, 96))
    odd = DescribedScene("c.png", "The image shows two objects. There is something odd here.", SCENE.objects, (96, 96))
    first = scene_readings([SCENE, single, odd], TAXONOMY, 6, seed=3, k=5, grid=0)
    assert first == scene_readings([SCENE, single, odd], TAXONOMY, 6, seed=3, k=5, grid=0)
    assert {image for _, image in first} == {"a.png"} and all(len(s.tags) == 5 for s, _ in first)
    assert scene_readings([SCENE], TAXONOMY, 0, seed=0) == []
    with pytest.raises(ValueError, match="two or more objects"):
        scene_readings([single], TAXONOMY, 1, seed=0)
    unknown = DescribedScene("d.png", DESCRIPTION, [("zenai", (0.0, 0.0, 9.0, 9.0)), ("gloop", (9.0, 9.0, 9.0, 9.0))], (96, 96))
    with pytest.raises(ValueError, match="could be described"):   # two tags cannot name a spade and a berry
        scene_readings([SCENE], TAXONOMY, 1, seed=0, k=2, grid=0)
    with pytest.raises(ValueError, match="gloop"):
        scene_readings([unknown], TAXONOMY, 1, seed=0)
