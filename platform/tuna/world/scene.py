"""Scenes: which objects an image holds, with instance attributes, positions and relations.

Class frequency is Zipf-like (so POPE's "popular" negatives mean something) and each image has a
theme superordinate most of its objects come from (so "adversarial", co-occurring negatives mean
something). Every scene is drawn from its own RNG, seeded by (world seed, corpus, index): a sample
does not depend on the order or process it was made in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuna.world.taxonomy import COLOURS, SIZES, FineClass

# Radius of an object as a fraction of the image side, per size attribute.
SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (0.12, 0.15), "medium": (0.16, 0.20), "large": (0.21, 0.26)}
THEME_PROBABILITY = 0.75   # chance an object comes from the image's theme superordinate
REPEAT_PROBABILITY = 0.15  # chance an object repeats the class of one already in the image
BACKGROUNDS = ["noise", "gradient", "grid", "speckle", "stripes", "blotch"]

CORPUS_CODES: dict[str, int] = {
    "web": 1, "web_b": 2, "alignment": 3, "instruction": 4, "pope_id": 5, "pope_ood": 6,
    "finer_id": 7, "finer_ood": 8, "finer_b": 9, "mme_id": 10, "mme_ood": 11, "captions_id": 12,
    "captions_ood": 13, "text": 14, "corrupt": 15, "clip_web": 16, "finer_val_id": 17, "finer_val_ood": 18,
    "finer_val_b": 19, "pope_val_id": 20, "pope_val_ood": 21, "vqa": 22, "attrseek": 23,
    "yes_no": 24, "mme_val_id": 25, "mme_val_ood": 26,
}


def sample_rng(seed: int, corpus: str, index: int) -> np.random.Generator:
    """The RNG of one sample: independent of every other sample and of generation order."""
    return np.random.default_rng([seed, CORPUS_CODES[corpus], index])


@dataclass(frozen=True)
class ObjectInstance:
    """One object in a scene: its class, instance attributes and placement (pixels)."""

    cls: FineClass
    colour: str
    size: str
    cx: float
    cy: float
    r: float
    rotation: float  # degrees

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """COCO box [x, y, w, h], clipped to the shape's extent."""
        return (round(self.cx - self.r, 2), round(self.cy - self.r, 2), round(2 * self.r, 2), round(2 * self.r, 2))

    @property
    def attributes(self) -> dict[str, str]:
        return {"colour": self.colour, "size": self.size, "pattern": self.cls.pattern}


@dataclass(frozen=True)
class Background:
    kind: str
    base: tuple[int, int, int]
    other: tuple[int, int, int]
    param: float


@dataclass(frozen=True)
class Scene:
    """What one image shows."""

    key: str
    size: int
    objects: tuple[ObjectInstance, ...]
    background: Background
    theme: str = field(default="")

    @property
    def class_names(self) -> list[str]:
        """Distinct fine-class names present, in first-appearance order."""
        return list(dict.fromkeys(o.cls.name for o in self.objects))

    def count(self, name: str) -> int:
        return sum(o.cls.name == name for o in self.objects)

    def relations(self) -> list[tuple[int, str, int]]:
        """(i, relation, j) for each ordered pair of objects that are clearly apart."""
        out = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i == j:
                    continue
                gap = 0.5 * (a.r + b.r)
                if a.cx < b.cx - gap:
                    out.append((i, "left of", j))
                elif a.cx > b.cx + gap:
                    out.append((i, "right of", j))
                if a.cy < b.cy - gap:
                    out.append((i, "above", j))
                elif a.cy > b.cy + gap:
                    out.append((i, "below", j))
        return out


def popularity(classes: list[FineClass], seed: int) -> dict[str, float]:
    """Zipf-like prior over fine classes (rank from a seeded permutation, weight 1 / (rank + 1)^0.7)."""
    rng = np.random.default_rng([seed, 7002])
    order = rng.permutation(len(classes))
    return {classes[int(i)].name: 1.0 / (rank + 1) ** 0.7 for rank, i in enumerate(order)}


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation background colour, light or dark."""
    level = int(rng.choice([50, 90, 170, 205]))
    return tuple(int(np.clip(level + rng.integers(-25, 26), 0, 255)) for _ in range(3))  # type: ignore[return-value]


def sample_background(rng: np.random.Generator) -> Background:
    return Background(kind=str(rng.choice(BACKGROUNDS)), base=_muted(rng), other=_muted(rng),
                      param=float(rng.uniform(0.0, 1.0)))


def sample_scene(
    rng: np.random.Generator,
    key: str,
    pool: list[FineClass],
    prior: dict[str, float],
    image_size: int,
    n_objects: tuple[int, int],
    required: list[FineClass] | None = None,
    sizes: list[str] | None = None,
) -> Scene:
    """Draw a scene from ``pool``: ``n_objects`` (inclusive range) objects, ``required`` ones first.

    Objects from the theme superordinate dominate; repeats of a class are allowed (counting
    questions need them). Objects are placed without heavy overlap; an object that finds no room is
    dropped, so callers that need a minimum count check it. ``sizes`` restricts the size attribute.
    """
    if not pool:
        raise ValueError(f"scene {key}: empty class pool")
    supers = sorted({c.superordinate for c in pool})
    theme = str(rng.choice(supers)) if not required else required[0].superordinate
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    chosen: list[FineClass] = list(required or [])
    themed = [c for c in pool if c.superordinate == theme]
    while len(chosen) < n:
        if chosen and rng.random() < REPEAT_PROBABILITY:
            chosen.append(chosen[int(rng.integers(len(chosen)))])
            continue
        cands = themed if (themed and rng.random() < THEME_PROBABILITY) else pool
        w = np.array([prior[c.name] for c in cands])
        chosen.append(cands[int(rng.choice(len(cands), p=w / w.sum()))])
    objects = _place(rng, chosen, image_size, sizes)
    return Scene(key=key, size=image_size, objects=tuple(objects), background=sample_background(rng), theme=theme)


def _place(rng: np.random.Generator, classes: list[FineClass], s: int, sizes: list[str] | None) -> list[ObjectInstance]:
    # Fewer objects leave room for bigger ones.
    size_pool = sizes or (SIZES if len(classes) <= 3 else SIZES[:2])
    placed: list[ObjectInstance] = []
    for cls in classes:
        for attempt in range(60):
            size = str(rng.choice(size_pool)) if attempt < 30 else "small"
            lo, hi = SIZE_RADIUS[size]
            r = float(rng.uniform(lo, hi)) * s
            cx = float(rng.uniform(r + 1, s - r - 1))
            cy = float(rng.uniform(r + 1, s - r - 1))
            if all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 >= (0.9 * (r + o.r)) ** 2 for o in placed):
                break
        else:
            continue  # no room: the object is dropped and the scene holds fewer objects
        colours = [c for c in COLOURS if c != cls.accent]
        placed.append(ObjectInstance(
            cls=cls, colour=str(rng.choice(colours)), size=size, cx=round(cx, 2), cy=round(cy, 2), r=round(r, 2),
            rotation=round(float(rng.uniform(-20, 20)), 1)))
    return placed
