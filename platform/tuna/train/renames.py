"""Novel-name rows (``train.stage<N>.novel_names``): a seeded share of the tagged data rows with every class that
both their conversation and their retrieved tags name renamed to a pseudo-word no class has, in the text and the
tags alike. The image still shows the seen class, so the new name can only be read from the tags: what TUNA must do
on a held-out object its vision takes for a seen one. With ``novel_decoys``, one other tag of a renamed row names the
seen class by its real name (the look-alike the image supports, as retrieval gives for a held-out object); the
answer still follows the tags' majority."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tuna.formats import LlavaRecord
from tuna.recipe import Recipe
from tuna.train.data import Example, id_digest, prepare, seeded_share
from tuna.train.readings import world_inputs
from tuna.world.language import plural
from tuna.world.taxonomy import pseudo_word


def rename_classes(examples: Sequence[Example], records: Sequence[LlavaRecord], names: Sequence[str], share: float,
                   seed: int, tokenizer: Any, stage: int, max_length: int, system: str,
                   decoys: int = 0) -> tuple[list[Example], int]:
    """``examples`` with a ``share`` of the tagged ones (chosen by ``seed`` and each id, as tag dropout chooses)
    rebuilt from their record (``records``, by id) with each class of ``names`` that the conversation and the tags
    both name (singular or plural) renamed to a fresh pseudo-word, per row. Rows naming no tagged class, or that
    no longer fit ``max_length`` renamed, stay as they were. With ``decoys``, up to that many renamed classes also
    keep their real name in one tag each (those two or more tags named), put in place of a tag (chosen per row) that
    names no renamed class; a row without such a tag gets none. Returns the rows and how many were renamed."""
    picked = seeded_share(examples, share, f"names:{seed}", "novel names")
    if not picked:
        return list(examples), 0
    forms = {n: (n, False) for n in names} | {plural(n): (n, True) for n in names}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(forms, key=len, reverse=True))) + r")\b")
    by_id = {r.id: r for r in records}
    out, renamed = [], 0
    for ex in examples:
        rec = by_id.get(ex.id)
        if ex.id not in picked or not ex.tags or rec is None:
            out.append(ex)
            continue
        spoken = {forms[m][0] for t in rec.conversations for m in pattern.findall(t["value"])}
        tagged = {forms[m][0] for t in ex.tags for m in pattern.findall(t)}
        targets = sorted(spoken & tagged)
        if not targets:
            out.append(ex)
            continue
        rng = np.random.default_rng(id_digest(str(seed), ex.id))
        taken = set(forms)
        new = {n: pseudo_word(rng, taken) for n in targets}
        to = {form: plural(new[name]) if many else new[name] for form, (name, many) in forms.items() if name in new}
        turns = [{**t, "value": _rename(pattern, to, t["value"])} for t in rec.conversations]
        again = prepare([LlavaRecord(rec.id, ex.image, turns)], tokenizer, stage, max_length, system).examples
        if not again:
            out.append(ex)
            continue
        tags = [_rename(pattern, to, t) for t in ex.tags]
        if decoys:
            tags = _with_decoys(tags, ex.tags, targets, decoys, forms, pattern, rng)
        out.append(dataclasses.replace(again[0], tags=tags))
        renamed += 1
    return out, renamed


def _with_decoys(tags: list[str], before: Sequence[str], targets: Sequence[str], decoys: int, forms: dict[str, tuple[str, bool]],
                 pattern: re.Pattern[str], rng: np.random.Generator) -> list[str]:
    """``tags`` (renamed) with up to ``decoys`` of ``targets`` that two or more tags named ``before`` (so the new name
    stays the majority) named by their real name in place of a tag that named none of ``targets``, chosen by ``rng``."""
    named = [{forms[m][0] for m in pattern.findall(t)} for t in before]
    free = [i for i, got in enumerate(named) if not got & set(targets)]
    out = list(tags)
    for name in [n for n in targets if sum(n in got for got in named) >= 2][:decoys]:
        if not free:
            break
        out[free.pop(int(rng.integers(len(free))))] = name
    return out


def _rename(pattern: re.Pattern[str], to: dict[str, str], text: str) -> str:
    return pattern.sub(lambda m: to.get(m.group(1), m.group(1)), text)


def novel_name_rows(cfg: Recipe, stage: int, records: Sequence[LlavaRecord], examples: Sequence[Example],
                    tokenizer: Any) -> tuple[list[Example], int]:
    """:func:`rename_classes` over the world taxonomy's class names (every domain) at ``train.stage<stage>.novel_names``
    (and ``novel_decoys``)."""
    sc = cfg.train.stage(stage)
    taxonomy, _ = world_inputs(cfg, "novel_names", False)
    names = [c["name"] for dom in sorted(taxonomy) for c in taxonomy[dom].get("classes", [])]
    return rename_classes(examples, records, names, sc.novel_names, cfg.run.seed + stage, tokenizer, stage,
                          sc.max_length, cfg.train.system_prompt, decoys=sc.novel_decoys)


__all__ = ["novel_name_rows", "rename_classes"]
