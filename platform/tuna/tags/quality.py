"""How well mined tags match the world: precision, recall and F1 of objects and attribute pairs.

Two references, because web alt-text is noisy on purpose (objects omitted, misnamed, called by a
hypernym):

- **world truth**: the objects that are really in the image (``objects`` in each web sample's json);
  a perfect miner still loses points here to the caption's noise;
- **caption truth**: what the caption states, reconstructed with the world's vocabulary (class and
  hypernym names, sizes, colours, patterns): every "a [size] [colour] [pattern] name" phrase gives
  the object ``name`` and the (attribute, name) pairs. This scores the extraction itself.

Scores are micro-averaged over captions (sets per caption, so duplicates count once).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuna.world.taxonomy import COLOURS, PATTERNS, SIZES, load_taxonomies


@dataclass(frozen=True)
class WorldVocabulary:
    """Object names (fine + coarse of both domains) and attribute words the world's captions use."""

    names: frozenset[str]
    attributes: frozenset[str]

    @classmethod
    def from_taxonomy(cls, path: Path) -> WorldVocabulary:
        """Read ``<world>/taxonomy.json``."""
        a, b = load_taxonomies(Path(path).read_text(encoding="utf-8"))
        names = {c.name for t in (a, b) for c in t.classes} | {c.coarse for t in (a, b) for c in t.classes}
        attrs = set(SIZES) | set(COLOURS) | (set(PATTERNS) - {"plain"})
        return cls(names=frozenset(names), attributes=frozenset(attrs))

    def pattern(self) -> re.Pattern[str]:
        attr = "|".join(sorted(self.attributes, key=len, reverse=True))
        name = "|".join(sorted(self.names, key=len, reverse=True))
        return re.compile(rf"\b(?:a|an) ((?:(?:{attr}) )*)({name})\b", re.IGNORECASE)


def caption_truth(caption: str, vocab: WorldVocabulary, pattern: re.Pattern[str] | None = None) -> tuple[set[str], set[tuple[str, str]]]:
    """Objects and (attribute, object) pairs a world caption states."""
    pattern = pattern or vocab.pattern()
    objects: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for m in pattern.finditer(caption):
        name = m.group(2).lower()
        objects.add(name)
        pairs.update((a, name) for a in m.group(1).lower().split())
    return objects, pairs


@dataclass(frozen=True)
class Score:
    """Micro-averaged precision / recall / F1 with the counts behind them."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict[str, float | int]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


def score(predicted: Iterable[Iterable[object]], truth: Iterable[Iterable[object]]) -> Score:
    """Micro P/R/F1 over paired per-caption sets (``predicted[i]`` against ``truth[i]``)."""
    tp = fp = fn = 0
    for p, t in zip(predicted, truth, strict=True):
        ps, ts = set(p), set(t)
        tp += len(ps & ts)
        fp += len(ps - ts)
        fn += len(ts - ps)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Score(precision, recall, f1, tp, fp, fn)


def evaluate(captions: Sequence[str], world_objects: Sequence[Iterable[str]], objects: Sequence[Iterable[str]],
             pairs: Sequence[Iterable[tuple[str, str]]], vocab: WorldVocabulary) -> dict[str, dict[str, float | int]]:
    """Scores of mined ``objects`` and (attribute, object) ``pairs`` against world and caption truth."""
    pat = vocab.pattern()
    truths = [caption_truth(c, vocab, pat) for c in captions]
    return {
        "objects_vs_world": score(objects, world_objects).as_dict(),
        "objects_vs_caption": score(objects, [t[0] for t in truths]).as_dict(),
        "attribute_pairs_vs_caption": score(pairs, [t[1] for t in truths]).as_dict(),
        "tags_vs_caption": score(
            [set(o) | {f"{a} {n}" for a, n in p} for o, p in zip(objects, pairs)],
            [t[0] | {f"{a} {n}" for a, n in t[1]} for t in truths]).as_dict(),
    }
