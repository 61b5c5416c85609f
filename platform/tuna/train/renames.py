"""Novel-name rows (``train.stage<N>.novel_names``): a seeded share of the tagged data rows with every class that
both their conversation and their retrieved tags name renamed to a pseudo-word no class has, in the text and the
tags alike. The image still shows the seen class, so the new name can only be read from the tags: what TUNA must do
on a held-out object its vision takes for a seen one."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tuna.formats import LlavaRecord
from tuna.recipe import Recipe
from tuna.train.data import Example, _seeded_share, prepare
from tuna.train.readings import _world_inputs
from tuna.world.language import plural
from tuna.world.taxonomy import pseudo_word


def rename_classes(examples: Sequence[Example], records: Sequence[LlavaRecord], names: Sequence[str], share: float,
                   seed: int, tokenizer: Any, stage: int, max_length: int, system: str) -> tuple[list[Example], int]:
    """``examples`` with a ``share`` of the tagged ones (chosen by ``seed`` and each id, as tag dropout chooses)
    rebuilt from their record (``records``, by id) with each class of ``names`` that the conversation and the tags
    both name (singular or plural) renamed to a fresh pseudo-word, per row. Rows naming no tagged class, or that
    no longer fit ``max_length`` renamed, stay as they were. Returns the rows and how many were renamed."""
    picked = _seeded_share(examples, share, f"names:{seed}", "novel names")
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
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{ex.id}".encode()).digest()[:8], "big"))
        taken = set(forms)
        new = {n: pseudo_word(rng, taken) for n in targets}
        to = {form: plural(new[name]) if many else new[name] for form, (name, many) in forms.items() if name in new}
        turns = [{**t, "value": _rename(pattern, to, t["value"])} for t in rec.conversations]
        again = prepare([LlavaRecord(rec.id, ex.image, turns)], tokenizer, stage, max_length, system).examples
        if not again:
            out.append(ex)
            continue
        out.append(dataclasses.replace(again[0], tags=[_rename(pattern, to, t) for t in ex.tags]))
        renamed += 1
    return out, renamed


def _rename(pattern: re.Pattern[str], to: dict[str, str], text: str) -> str:
    return pattern.sub(lambda m: to.get(m.group(1), m.group(1)), text)


def novel_name_rows(cfg: Recipe, stage: int, records: Sequence[LlavaRecord], examples: Sequence[Example],
                    tokenizer: Any) -> tuple[list[Example], int]:
    """:func:`rename_classes` over the world taxonomy's class names (every domain) at ``train.stage<stage>.novel_names``."""
    sc = cfg.train.stage(stage)
    taxonomy, _ = _world_inputs(cfg, "novel_names", False)
    names = [c["name"] for dom in sorted(taxonomy) for c in taxonomy[dom].get("classes", [])]
    return rename_classes(examples, records, names, sc.novel_names, cfg.run.seed + stage, tokenizer, stage,
                          sc.max_length, cfg.train.system_prompt)


__all__ = ["novel_name_rows", "rename_classes"]
