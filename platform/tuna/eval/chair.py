"""CHAIR (Rohrbach et al., EMNLP 2018): object hallucination in generated captions.

Object mentions are the class names of the vocabulary (singular or plural, ``tuna.world.language.plural``)
found as whole words in the lower-cased caption; every occurrence counts, as in the original
``utils/chair.py``. Against the ground-truth objects of each image:

- CHAIR_i = hallucinated mentions / all mentions (0.0 when nothing was mentioned);
- CHAIR_s = captions with at least one hallucinated mention / all captions;
- recall  = ground-truth objects mentioned at least once / ground-truth objects (per image, summed).

On the bundled world the vocabulary is the class names (unambiguous, no synonyms needed); on real COCO it is
the 80 classes with the words that name each (``tuna.readers.coco_classes.COCO_SYNONYMS``, our own list in
the spirit of CHAIR's ``synonyms.txt``): a mention of "puppy" counts as "dog". The ground truth is the COCO
instances only (not also objects mined from reference captions, as the original adds).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from tuna.world.language import plural
from tuna.world.taxonomy import Taxonomy

_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def chair_vocabulary(*taxonomies: Taxonomy) -> list[str]:
    """The fine class names of the given taxonomies, in order (pass both domains to count a domain-B name
    in a domain-A caption as a hallucination)."""
    names = [c.name for tax in taxonomies for c in tax.classes]
    if not names:
        raise ValueError("no class names: pass at least one non-empty taxonomy")
    return list(dict.fromkeys(names))


Vocabulary = Iterable[str] | Mapping[str, Sequence[str]]   # class names, or class name -> the words naming it


def mention_index(vocabulary: Vocabulary) -> dict[tuple[str, ...], str]:
    """word sequence -> class name, for every name (or synonym) and its plural (a word wins over another's plural)."""
    pairs = ([(word, name) for name, words in vocabulary.items() for word in (name, *words)]
             if isinstance(vocabulary, Mapping) else [(name, name) for name in vocabulary])
    index: dict[tuple[str, ...], str] = {}
    for word, name in pairs:
        key = tuple(_words(word))
        if not key or " ".join(key) != " ".join(word.lower().split()):
            raise ValueError(f"class name or synonym {word!r} ({name}) must be letters and spaces only")
        if index.get(key, name) != name:
            raise ValueError(f"{word!r} names both {index[key]!r} and {name!r}; a word may name one class only")
        index[key] = name
    make_plural = english_plural if isinstance(vocabulary, Mapping) else plural
    for word, name in pairs:
        index.setdefault(tuple(_words(make_plural(word))), name)
    return index


def english_plural(phrase: str) -> str:
    """The regular English plural of a phrase's last word (puppy -> puppies, woman -> women, bus -> buses,
    knife -> knives): enough for COCO's class names and synonyms; irregular ones are listed as synonyms."""
    head, _, word = phrase.rpartition(" ")
    if word.endswith("man"):
        word = word[:-3] + "men"
    elif word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        word = word[:-1] + "ies"
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        word += "es"
    elif word.endswith("fe"):
        word = word[:-2] + "ves"
    else:
        word += "s"
    return f"{head} {word}" if head else word


def object_mentions(caption: str, index: Mapping[tuple[str, ...], str]) -> list[str]:
    """The class names mentioned in ``caption``, one entry per occurrence (longest match first)."""
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be a str, got {type(caption).__name__}: {caption!r}")
    words = _words(caption)
    longest = max((len(k) for k in index), default=0)
    found: list[str] = []
    i = 0
    while i < len(words):
        for k in range(min(longest, len(words) - i), 0, -1):
            name = index.get(tuple(words[i:i + k]))
            if name is not None:
                found.append(name)
                i += k
                break
        else:
            i += 1
    return found


def chair_metrics(captions: Mapping[str, str], ground_truth: Mapping[str, Collection[str]],
                  vocabulary: Vocabulary) -> dict[str, float | int]:
    """CHAIR_i, CHAIR_s and object recall of ``captions`` (image -> generated caption).

    ``ground_truth``: image -> object class names present (e.g. ``tuna.formats.coco_objects_by_image``);
    ``vocabulary``: the class names that count as object mentions (e.g. :func:`chair_vocabulary`), or class
    name -> the words that name it (``COCO_SYNONYMS``).
    Also returns n (captions), mentions, hallucinated (mentions) and empty (blank captions, which
    mention nothing: not hallucinated, but they recall nothing).
    """
    if not captions:
        raise ValueError("no captions to score")
    index = mention_index(vocabulary)
    known = set(index.values())
    mentions = hallucinated = bad_captions = empty = gt_total = gt_found = 0
    for image, caption in captions.items():
        if image not in ground_truth:
            raise ValueError(f"caption for image {image!r} has no ground truth; "
                             f"known images look like {sorted(ground_truth)[:3]}")
        gt = set(ground_truth[image])
        unknown = gt - known
        if unknown:
            raise ValueError(f"image {image!r}: ground-truth object(s) {sorted(unknown)} are not in the vocabulary")
        found = object_mentions(caption, index)
        empty += not caption.strip()
        wrong = [m for m in found if m not in gt]
        mentions += len(found)
        hallucinated += len(wrong)
        bad_captions += bool(wrong)
        gt_total += len(gt)
        gt_found += len(gt & set(found))
    return {"chair_i": hallucinated / mentions if mentions else 0.0, "chair_s": bad_captions / len(captions),
            "recall": gt_found / gt_total if gt_total else 0.0, "n": len(captions), "mentions": mentions,
            "hallucinated": hallucinated, "empty": empty}
