"""Retrieval-reading samples: a list of retrieved-style tags, a question, and the answer the tags support.

The reading skill a real LLM brings to TUNA (use what the context names), written from the world's text
knowledge: every class of the taxonomy (OOD and domain B included, as an LLM knows rare names from
text), never an image and nothing from the eval splits. LM pre-training reads them as text
(``lm.reading_docs_per_class``); stage 2 can mix them in as text-only conversations
(``train.stage2.reading_per_class``), as LLaVA-1.5 mixes text-only data into instruction tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tuna.world.language import SHORT_ANSWER, article

_SIZES = ("small", "large")


@dataclass(frozen=True)
class ReadingSample:
    tags: list[str]      # k tags, best first, as retrieval ranks them
    question: str        # one human turn (no <image>)
    answer: str          # the assistant turn naming the class the tags support
    name: str            # that class


def _tag(cls: dict[str, Any], rng: np.random.Generator) -> str:
    """One retrieved-style tag naming ``cls``: the bare name or an attribute + the name (as tag mining yields)."""
    if rng.random() < 0.35:
        return cls["name"]
    attrs = [cls["pattern"], cls["accent"], str(rng.choice(_SIZES))]
    return f"{attrs[int(rng.integers(len(attrs)))]} {cls['name']}"


def reading_samples(taxonomy: dict[str, Any], per_class: int, seed: int, k: int = 5) -> list[ReadingSample]:
    """``per_class`` samples for every class of ``taxonomy`` (a world's taxonomy.json): ``k`` tags in which
    the class is a strict majority (and first in most samples: a look-alike sibling leads 1 in 5, as
    nearest-neighbour tags do), then a which-kind question answered with its name (long or short form).
    """
    if per_class < 0 or k < 2:
        raise ValueError(f"per_class must be >= 0 and k >= 2, got per_class={per_class}, k={k}")
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
            name, a = cls["name"], article(cls["name"])
            q, long, short = [
                (f"What kind of {cls['superordinate']} is in the image?",
                 f"There is {a} {name}, which is a kind of {cls['coarse']}.", name),
                (f"What kind of {cls['coarse']} is this?", f"This is {a} {name}.", name),
                ("What is the object in the image?", f"It is {a} {name}.", name),
            ][int(rng.integers(3))]
            if rng.random() < 0.5:
                q, long = f"{q}\n{SHORT_ANSWER}", short
            out.append(ReadingSample(tags, q, long, name))
    return out


__all__ = ["ReadingSample", "reading_samples"]
