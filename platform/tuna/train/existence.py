"""Existence turns ("Is there a X in the image?" / "Does the image contain a X?") and the retrieved tags beside them.

Retrieved tags name most present objects and few absent ones, so in instruction data a tag naming the asked object
all but answers an existence question (mini, seed 1, 9 tags: "yes" on 89% of the turns whose object a tag names, on
22% of the others). A model trained on that answers existence from its tags and stops looking, and misses the present
objects its tags miss (POPE's multi-object images leave 41% of them untagged). :func:`existence_tag_rows` edits the
tags of a share of the conversations so they do not decide their existence turns; :func:`existence_cue` counts how
far the tags decide them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tuna.eval.finer import tag_names
from tuna.train.data import Example, id_digest, seeded_share

# POPE's template and its LLaVA-665K / MME variants; "<image>" and an instruction on other lines are allowed
_EXISTENCE = re.compile(r"^\s*(?:is there an? (?P<a>.+?) in (?:the|this) (?:image|picture|photo)"
                        r"|does (?:the|this) (?:image|picture|photo) (?:contain|have|show) an? (?P<b>.+?))\s*(?:\?|$)",
                        re.IGNORECASE)


def existence_object(question: str) -> str | None:
    """The object an existence question asks about ("<image>\\nIs there a dining table in the image?\\nAnswer ..."
    -> "dining table"), or None for any other question."""
    for line in question.replace("<image>", "\n").splitlines():
        match = _EXISTENCE.match(line)
        if match:
            return match["a"] or match["b"]
    return None


def existence_turns(conversations: Sequence[Mapping[str, str]]) -> list[tuple[str, bool]]:
    """(asked object, answer is yes) for every human existence question answered with a plain yes or no."""
    out = []
    for ask, reply in zip(conversations[0::2], conversations[1::2]):
        name = existence_object(ask.get("value", "")) if ask.get("from") == "human" else None
        answer = reply.get("value", "").strip().lower().rstrip(".!")
        if name and answer in ("yes", "no"):
            out.append((name, answer == "yes"))
    return out


def _names_any(tag: str, names: Sequence[str]) -> bool:
    return any(tag_names(tag, name) for name in names)


def edit_tags(tags: Sequence[str], turns: Sequence[tuple[str, bool]], num_tags: int, key: int,
              filler: Sequence[str] = ()) -> list[str]:
    """``tags`` with every tag naming an object asked as present removed and the name of each object asked as absent
    put among them (at a position drawn from ``key``), then topped up from ``filler`` (another image's tags, none
    naming an asked object) to as many tags as before, at most ``num_tags``: so the tags say nothing about which
    answers are yes, and their count does not tell an edited list. An absent name that would also name a present
    one is left out."""
    asked = [name for name, _ in turns]
    present = [name for name, yes in turns if yes]
    out = [tag for tag in tags if not _names_any(tag, present)]
    for i, (name, yes) in enumerate(turns):
        if yes or _names_any(name, present) or any(tag_names(tag, name) for tag in out):
            continue
        out.insert((key >> (8 * (i % 8))) % (len(out) + 1), name)
    want = min(len(tags), num_tags)
    for tag in filler:
        if len(out) >= want:
            break
        if tag not in out and not _names_any(tag, asked):
            out.append(tag)
    return out[:num_tags]


def existence_tag_rows(examples: Sequence[Example], conversations: Mapping[str, Sequence[Mapping[str, str]]],
                       share: float, seed: int, num_tags: int) -> tuple[list[Example], int]:
    """``examples`` with the tags of a ``share`` of those that carry tags and existence turns edited by
    :func:`edit_tags` (chosen by ``seed`` and each id, topped up from another tagged example's tags; ``conversations``
    by example id), and how many of them changed."""
    asked = {ex.id: turns for ex in examples if ex.tags and (turns := existence_turns(conversations.get(ex.id, ())))}
    picked = seeded_share([ex for ex in examples if ex.id in asked], share, f"existence:{seed}", "existence tags")
    tagged = [ex.tags for ex in examples if ex.tags]
    out = []
    for ex in examples:
        if ex.id in picked:
            key = id_digest(str(seed), ex.id)
            ex = dataclasses.replace(ex, tags=edit_tags(ex.tags, asked[ex.id], num_tags, key, tagged[key % len(tagged)]))
        out.append(ex)
    return out, sum(a is not b and a.tags != b.tags for a, b in zip(examples, out))


def existence_cue(examples: Sequence[Example], conversations: Mapping[str, Sequence[Mapping[str, str]]]) -> dict[str, Any]:
    """Existence turns of tagged ``examples`` counted by answer and by whether a tag names the asked object, and
    P(yes | named) and P(yes | unnamed): equal when the tags do not decide existence."""
    counts = {"yes_named": 0, "no_named": 0, "yes_unnamed": 0, "no_unnamed": 0}
    for ex in examples:
        if not ex.tags:
            continue
        for name, yes in existence_turns(conversations.get(ex.id, ())):
            named = any(tag_names(tag, name) for tag in ex.tags)
            counts[f"{'yes' if yes else 'no'}_{'named' if named else 'unnamed'}"] += 1
    out: dict[str, Any] = dict(counts)
    for part in ("named", "unnamed"):
        total = counts[f"yes_{part}"] + counts[f"no_{part}"]
        out[f"p_yes_{part}"] = round(counts[f"yes_{part}"] / total, 3) if total else None
    return out


def describe_cue(cue: Mapping[str, Any]) -> str:
    """One log line of :func:`existence_cue`."""
    return (f"existence turns: a tag names the object in {cue['yes_named'] + cue['no_named']:,} (yes {cue['p_yes_named']}), "
            f"none does in {cue['yes_unnamed'] + cue['no_unnamed']:,} (yes {cue['p_yes_unnamed']})")


__all__ = ["describe_cue", "edit_tags", "existence_cue", "existence_object", "existence_tag_rows", "existence_turns"]
