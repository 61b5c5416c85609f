"""The world's three-level taxonomies (superordinate > coarse > fine) for domain A and domain B.

A coarse class owns one base shape; its fine classes share that shape and differ in pattern, mark and
accent palette, so siblings look alike and retrieval returns plausible distractors. Fine-class names
are seeded pseudo-words (like "mangosteen" to an LLM: a name the language model learns from text and
the connector never sees for held-out classes). Domain B has its own shapes, names and brands.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tuna.recipe import DomainConfig, TaxonomyConfig

# Domain A superordinates and their coarse classes (plain English; fine names are invented).
SUPERORDINATES_A: list[tuple[str, list[str]]] = [
    ("fruit", ["berry", "gourd", "pod", "drupe"]),
    ("tool", ["wrench", "spade", "chisel", "clamp"]),
    ("critter", ["beetle", "snail", "moth", "newt"]),
    ("vessel", ["jar", "bowl", "flask", "urn"]),
    ("gem", ["crystal", "pebble", "shard", "bead"]),
    ("flower", ["bloom", "bud", "petal", "sprig"]),
]
# Domain B: a fashion-like domain with brands (the datastore-swap target).
SUPERORDINATES_B: list[tuple[str, list[str]]] = [
    ("garment", ["tunic", "scarf", "cloak", "vest"]),
    ("accessory", ["tote", "clasp", "badge", "pouch"]),
    ("footwear", ["clog", "sandal", "boot", "slipper"]),
    ("headwear", ["bonnet", "turban", "visor", "beret"]),
    ("jewelry", ["anklet", "brooch", "pendant", "cuff"]),
    ("textile", ["rug", "quilt", "towel", "drape"]),
]
SHAPES: list[str] = [
    "circle", "square", "triangle", "diamond", "hexagon", "pentagon", "star", "cross", "heart",
    "crescent", "ellipse", "trapezoid", "arrow", "ring", "octagon", "parallelogram", "semicircle",
    "capsule",
]
PATTERNS: list[str] = ["plain", "striped", "dotted", "checkered", "wavy", "crosshatched", "ringed"]
MARKS: list[str] = ["none", "dot", "bar", "cross", "notch", "halo"]
MARK_PHRASES: dict[str, str] = {
    "none": "no mark", "dot": "a central dot", "bar": "a dark bar", "cross": "a small cross",
    "notch": "a corner notch", "halo": "a bright outline",
}
# Named colours with their RGB values: the instance colour attribute and the accent palette.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40), "orange": (255, 127, 14), "yellow": (240, 220, 40), "green": (44, 160, 44),
    "blue": (31, 119, 180), "purple": (148, 103, 189), "pink": (247, 129, 191), "brown": (140, 86, 75),
    "gray": (127, 127, 127), "white": (245, 245, 245), "black": (20, 20, 20), "teal": (23, 190, 207),
}
SIZES: list[str] = ["small", "medium", "large"]

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr",
           "pl", "sk", "st", "tr", "zh", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "n", "r", "l", "m", "x", "k", "s"]
# Generated names must not collide with words the captions and questions use.
_RESERVED = {w for _, cs in SUPERORDINATES_A + SUPERORDINATES_B for w in cs} | {
    s for s, _ in SUPERORDINATES_A + SUPERORDINATES_B} | set(SHAPES) | set(PATTERNS) | set(COLOURS) | {
    "image", "photo", "there", "yes", "none", "left", "right", "above", "below", "near", "next"}


@dataclass(frozen=True)
class FineClass:
    """One fine-grained class: its names at three levels, its look and its held-out status."""

    id: int                 # COCO category id, unique across both domains
    name: str               # fine-level label (a pseudo-word)
    coarse: str             # coarse-level label
    superordinate: str      # superordinate ("basic") label
    domain: str             # "A" or "B"
    shape: str              # base shape shared by all fine classes of the coarse class
    pattern: str            # surface pattern (class-defining)
    mark: str               # small mark (class-defining)
    accent: str             # accent colour name (pattern and mark are drawn in it)
    ood: bool               # held out of alignment and instruction data
    brand: str | None       # domain B: the brand that makes it (a named entity)

    @property
    def attributes(self) -> list[str]:
        """Class-level visual attributes, as FINER lists them for a label."""
        return [f"{self.shape} shape", f"{self.pattern} pattern", MARK_PHRASES[self.mark], f"{self.accent} accents"]


@dataclass(frozen=True)
class Taxonomy:
    """All fine classes of one domain, with lookups by name and level."""

    domain: str
    classes: tuple[FineClass, ...]

    def by_name(self, name: str) -> FineClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"no fine class named {name!r} in domain {self.domain}")

    @property
    def id_classes(self) -> list[FineClass]:
        return [c for c in self.classes if not c.ood]

    @property
    def ood_classes(self) -> list[FineClass]:
        return [c for c in self.classes if c.ood]

    def siblings(self, cls: FineClass) -> list[FineClass]:
        return [c for c in self.classes if c.coarse == cls.coarse and c.name != cls.name]

    @property
    def coarse_names(self) -> list[str]:
        return list(dict.fromkeys(c.coarse for c in self.classes))

    @property
    def superordinate_names(self) -> list[str]:
        return list(dict.fromkeys(c.superordinate for c in self.classes))

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "classes": [asdict(c) for c in self.classes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Taxonomy:
        return cls(domain=data["domain"], classes=tuple(FineClass(**c) for c in data["classes"]))


def pseudo_word(rng: np.random.Generator, taken: set[str], syllables: tuple[int, int] = (2, 3)) -> str:
    """A class-name-like word of ``syllables`` syllables (5-10 letters) from ``rng``, not in ``taken`` (which it joins)
    nor a word captions and questions use."""
    while True:
        n = int(rng.integers(syllables[0], syllables[1] + 1))
        word = "".join(str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(n))
        word += str(rng.choice(_CODAS))
        if 5 <= len(word) <= 10 and word not in taken and word not in _RESERVED:
            taken.add(word)
            return word


def build_taxonomies(cfg_a: TaxonomyConfig, cfg_b: DomainConfig, seed: int) -> tuple[Taxonomy, Taxonomy]:
    """Build domain A (with held-out classes) and domain B (all new, with brands) for one seed."""
    rng = np.random.default_rng([seed, 7001])
    shape_order = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    taken: set[str] = set()
    next_id = 1
    domains = []
    for domain, cfg, tree in (("A", cfg_a, SUPERORDINATES_A), ("B", cfg_b, SUPERORDINATES_B)):
        classes: list[FineClass] = []
        for s in range(cfg.superordinates):
            sup, coarse_names = tree[s]
            for c in range(cfg.coarse_per_superordinate):
                shape = shape_order.pop(0)
                patterns = [PATTERNS[i] for i in rng.permutation(len(PATTERNS))[: cfg.fine_per_coarse]]
                for f in range(cfg.fine_per_coarse):
                    accent = str(rng.choice(list(COLOURS)))
                    brand = pseudo_word(rng, taken, (2, 2)).capitalize() if domain == "B" else None
                    classes.append(FineClass(
                        id=next_id, name=pseudo_word(rng, taken), coarse=coarse_names[c], superordinate=sup,
                        domain=domain, shape=shape, pattern=patterns[f], mark=str(rng.choice(MARKS)),
                        accent=accent, ood=False, brand=brand))
                    next_id += 1
        if domain == "A":
            classes = _hold_out(classes, cfg_a, rng)
        domains.append(Taxonomy(domain=domain, classes=tuple(classes)))
    return domains[0], domains[1]


def _hold_out(classes: list[FineClass], cfg: TaxonomyConfig, rng: np.random.Generator) -> list[FineClass]:
    """Mark ``cfg.num_ood`` classes as OOD: one per coarse class first, the rest at random."""
    by_coarse: dict[str, list[int]] = {}
    for i, c in enumerate(classes):
        by_coarse.setdefault(c.coarse, []).append(i)
    chosen = {int(rng.choice(idx)) for idx in by_coarse.values()}
    rest = [i for i in range(len(classes)) if i not in chosen]
    # Never hold out the last seen class of a coarse class.
    rng.shuffle(rest)
    for i in rest:
        if len(chosen) >= cfg.num_ood:
            break
        seen_left = [j for j in by_coarse[classes[i].coarse] if j not in chosen and j != i]
        if seen_left:
            chosen.add(i)
    return [FineClass(**{**asdict(c), "ood": i in chosen}) for i, c in enumerate(classes)]


def dump_taxonomies(a: Taxonomy, b: Taxonomy) -> str:
    """The ``taxonomy.json`` text: both domains, every class with its levels, look and OOD flag."""
    return json.dumps({"A": a.to_json(), "B": b.to_json()}, indent=1, sort_keys=True) + "\n"


def load_taxonomies(text: str) -> tuple[Taxonomy, Taxonomy]:
    data = json.loads(text)
    return Taxonomy.from_json(data["A"]), Taxonomy.from_json(data["B"])
