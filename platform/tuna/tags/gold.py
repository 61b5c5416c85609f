"""Hand-written gold tags for real-style captions (COCO/CC3M-like) and the convention-tolerant scorer.

The gold file (``bench/data/real_captions.jsonl``, one JSON object a line) holds ``id``, ``split``
(``dev``: tuned on; ``heldout``: reported only), ``caption``, ``objects``, ``pairs`` ([attribute,
object]) and ``entities``. The conventions it is written to:

- an object is a noun that heads a noun phrase, lowercased and singular ("people" -> "person");
  generic picture words (:data:`tuna.tags.lexicon.GENERIC_WORDS`: photo, view, background, top, side,
  ...), time words (day, night, winter) and named things are not objects;
- "X of Y" with a quantity or collection X ("a group of people", "a slice of pizza", "stacks of logs")
  names Y only; containers stay objects ("a cup of coffee" -> cup, coffee);
- an attribute pair is a word before the object that describes it (colour, size, material, state,
  "a frozen lake", "a sleeping cat"), never a verb or participle after it ("a bear swimming");
- entities are names (people, places, brands, events), lowercased.

Scoring is convention-tolerant: a compound object counts as its head noun plus attributes, on both
sides ("wine glass" = object "glass" + pair ("wine", "glass"); a multi-word attribute is one pair per
word), so a miner that keeps compounds and one that splits them score alike. Objects and pairs are
micro P/R/F1 over per-caption sets; entity recall counts a gold entity found when a predicted entity
has the same words, or one's words are a run of the other's ("elizabeth" for "queen elizabeth"; a
possessive "'s" and a leading "the" ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna.tags.quality import Score, score

SPLITS = ("dev", "heldout")


@dataclass(frozen=True)
class GoldCaption:
    """One hand-tagged caption."""

    id: str
    split: str
    caption: str
    objects: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)


def load_gold(path: Path | str) -> list[GoldCaption]:
    """Read the gold JSONL file; a malformed line raises ``ValueError`` naming file and line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            row = GoldCaption(id=d["id"], split=d["split"], caption=d["caption"], objects=list(d["objects"]),
                              pairs=[(a, o) for a, o in d["pairs"]], entities=list(d["entities"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: not a gold caption ({err}); expected JSON with id, split, caption, "
                             f"objects, pairs, entities") from None
        if row.split not in SPLITS:
            raise ValueError(f"{path}:{n}: split {row.split!r} is not one of {', '.join(SPLITS)}")
        rows.append(row)
    return rows


def normalise(objects: Iterable[str], pairs: Iterable[tuple[str, str]]) -> tuple[set[str], set[tuple[str, str]]]:
    """Objects as head nouns and pairs as (attribute word, head noun): a compound's leading words
    become attribute pairs of its head ("red wine glass" -> "glass", ("wine", "glass"))."""
    heads: set[str] = set()
    out: set[tuple[str, str]] = set()
    for name in objects:
        words = name.lower().split()
        if not words:
            continue
        heads.add(words[-1])
        out.update((w, words[-1]) for w in words[:-1])
    for attr, name in pairs:
        words = name.lower().split()
        if words:
            out.update((a, words[-1]) for a in attr.lower().split())
            out.update((w, words[-1]) for w in words[:-1])
    return heads, out


def entity_found(gold: str, predicted: Iterable[str]) -> bool:
    """A gold entity matches a predicted one with the same words, or when one's words are a
    contiguous run of the other's (leading "the" and a possessive "'s" ignored)."""
    g = _words(gold)
    for p in predicted:
        w = _words(p)
        if w and (_run_of(w, g) or _run_of(g, w)):
            return True
    return False


def _words(text: str) -> list[str]:
    words = [w.removesuffix("'s").removesuffix("\u2019s") for w in text.lower().replace("-", " ").split()]
    return words[1:] if words[:1] == ["the"] else words


def _run_of(part: list[str], whole: list[str]) -> bool:
    n = len(part)
    return any(whole[i:i + n] == part for i in range(len(whole) - n + 1))


@dataclass(frozen=True)
class GoldScores:
    """Object and attribute-pair P/R/F1 and entity recall of one split."""

    captions: int
    objects: Score
    pairs: Score
    entity_recall: float
    entities: int

    def as_dict(self) -> dict[str, Any]:
        return {"captions": self.captions, "objects": self.objects.as_dict(), "attribute_pairs": self.pairs.as_dict(),
                "entity_recall": round(self.entity_recall, 4), "gold_entities": self.entities}


def score_gold(gold: Sequence[GoldCaption], objects: Sequence[Iterable[str]], pairs: Sequence[Iterable[tuple[str, str]]],
               entities: Sequence[Iterable[str]]) -> GoldScores:
    """Scores of predictions (one entry per gold caption, same order) against the gold tags."""
    if not len(gold) == len(objects) == len(pairs) == len(entities):
        raise ValueError(f"gold has {len(gold)} captions but predictions {len(objects)}/{len(pairs)}/{len(entities)}")
    pred = [normalise(o, p) for o, p in zip(objects, pairs)]
    true = [normalise(g.objects, g.pairs) for g in gold]
    found = total = 0
    for g, ents in zip(gold, entities):
        ents = list(ents)
        total += len(g.entities)
        found += sum(entity_found(e, ents) for e in g.entities)
    return GoldScores(captions=len(gold), objects=score([p[0] for p in pred], [t[0] for t in true]),
                      pairs=score([p[1] for p in pred], [t[1] for t in true]),
                      entity_recall=found / total if total else 1.0, entities=total)


def differences(gold: Sequence[GoldCaption], objects: Sequence[Iterable[str]], pairs: Sequence[Iterable[tuple[str, str]]],
                entities: Sequence[Iterable[str]]) -> list[dict[str, Any]]:
    """Per caption where prediction and gold differ: the missing and extra objects and pairs, the
    gold entities not found (for reading errors, dev split only)."""
    out = []
    for g, o, p, e in zip(gold, objects, pairs, entities):
        po, pp = normalise(o, p)
        to, tp = normalise(g.objects, g.pairs)
        e = list(e)
        lost = [x for x in g.entities if not entity_found(x, e)]
        if po != to or pp != tp or lost:
            out.append({"id": g.id, "caption": g.caption, "missing_objects": sorted(to - po), "extra_objects": sorted(po - to),
                        "missing_pairs": sorted(tp - pp), "extra_pairs": sorted(pp - tp), "missing_entities": lost})
    return out
