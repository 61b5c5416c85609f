"""Evaluate trained variants side by side: per-variant metrics, the summary table, up-to-date checks.

Outputs under ``<data_dir>/eval/``: ``<variant>/metrics.json`` (every number of every task) and
``summary.json`` / ``table.md`` (the headline numbers per variant). TUNA is also asked the domain-B
FINER questions with datastore A, B and none (the zero-shot datastore swap; nothing is retrained).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from tuna.eval.evaluate import EVAL_VERSION, EvalError, evaluate_model, headline, write_json
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.sources import EVAL_SOURCES, file_digest, sources

# The columns of the summary table: (key in headline(), header). FINER EM is FINER's rule (eval_fgvc.py:
# substring of the first 20 tokens after the first "Answer:") unless the header says whole-word.
COLUMNS = (
    ("finer_ood_fine_em", "FINER OOD fine EM (FINER rule)"), ("finer_ood_fine_em_word", "FINER OOD fine EM (whole-word)"),
    ("finer_id_fine_em", "FINER ID fine EM"),
    ("finer_ood_coarse_em", "FINER OOD coarse EM"), ("finer_b_fine_em", "FINER B fine EM (swapped-in datastore)"),
    ("pope_id_f1", "POPE ID F1"), ("pope_ood_f1", "POPE OOD F1"), ("pope_id_acc", "POPE ID acc"),
    ("pope_ood_acc", "POPE OOD acc"), ("pope_id_yes", "POPE ID yes-ratio"), ("mme_id_total", "MME ID"),
    ("mme_ood_total", "MME OOD"), ("chair_ood_i", "CHAIR_i OOD"), ("chair_ood_s", "CHAIR_s OOD"),
    ("finer_ood_gold_in_tags", "OOD: a top-k tag names the object"), ("finer_ood_gold_majority", "OOD: most tags name it"),
    ("pope_id_recall_tag_named", "POPE ID recall, objects a tag names"),
    ("pope_id_recall_tag_unnamed", "POPE ID recall, objects no tag names"),
)


def b_datastores(cfg: Recipe, variant: str, tag_mode: str) -> tuple[str | None, ...]:
    """Which datastores answer domain B: for TUNA the swap (``model.datastore``, ``eval.swap_datastore``, no tags),
    the swap target for tag ablations, none for the baseline (or when the recipe declares no swap)."""
    swap = cfg.eval.swap_datastore
    if tag_mode == "none" or swap is None:
        return (None,)
    return (cfg.model.datastore, swap, None) if variant == "tuna" else (swap,)


def _fingerprint(cfg: Recipe, variant: str) -> str:
    trained = layout(cfg).stage(variant, 2) / "metrics.json"
    payload = {"version": EVAL_VERSION, "eval": _eval_fingerprint(cfg),
               "model": hashlib.sha256(trained.read_bytes()).hexdigest()[:16] if trained.is_file() else None,
               "world": sources(cfg).digest(*EVAL_SOURCES, "taxonomy"),
               "datastores": [file_digest(layout(cfg).datastore(n) / "manifest.json") for n in cfg.datastores]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _eval_fingerprint(cfg: Recipe) -> str:
    """``section_fingerprint(cfg.eval)`` without ``probes``: the probes keep their own fingerprint
    (tuna.eval.probes), so switching them on or off re-scores no model."""
    fields = {k: v for k, v in dataclasses.asdict(cfg.eval).items() if k != "probes"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def is_up_to_date(cfg: Recipe, variant: str) -> bool:
    path = layout(cfg).eval / variant / "metrics.json"
    try:
        return json.loads(path.read_text())["fingerprint"] == _fingerprint(cfg, variant)
    except (OSError, ValueError, KeyError):
        return False


def evaluate_variant(cfg: Recipe, variant: str, progress: bool = False,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate one trained variant (its stage-2 model) on every task of ``eval.tasks``; saves and returns the metrics."""
    from tuna.variants import variant_model

    folder = layout(cfg).model(variant, 2)
    if not (folder / "config.json").is_file():
        raise EvalError(f"variant {variant!r} has no trained model at {folder}; run `tuna train --variant {variant}` first")
    tag_mode = variant_model(cfg, variant)["tag_mode"]
    log(f"eval {variant} ({folder})")
    metrics = evaluate_model(cfg, folder, tag_mode, b_datastores(cfg, variant, tag_mode), cfg.eval.tasks, progress, log,
                             answers_dir=layout(cfg).eval / variant / "answers")
    metrics.update(variant=variant, fingerprint=_fingerprint(cfg, variant), headline=headline(metrics))
    write_json(layout(cfg).eval / variant / "metrics.json", metrics)
    return metrics


def validate_variant(cfg: Recipe, variant: str, progress: bool = False,
                     log: Callable[[str], None] = print) -> dict[str, float]:
    """FINER (world.sizes.finer_val), and POPE, MME and CHAIR (world.sizes.pope_val, mme_val; CHAIR describes the
    POPE validation scenes) when the world has them, on the validation splits, for choosing settings without looking at the eval splits: saves
    ``eval/validation/<variant>.json`` and returns its headline numbers."""
    from tuna.variants import variant_model

    src = sources(cfg)
    finer = [s for s in src.splits("finer", validation=True) if (src.eval_set("finer", s, validation=True).path).exists()]
    if not finer:
        raise EvalError("no FINER validation split: set world.sizes.finer_val > 0 (e.g. 100) and regenerate the world, "
                        "or point data.finer_val_id.path at a FINER file held out of the eval split")
    tasks = ["finer"]
    if any(any(src.eval_set("pope", s, validation=True).path.glob("*pope_*.json")) for s in src.splits("pope", True)):
        tasks.insert(0, "pope")
    if any(src.eval_set("mme", s, validation=True).path.is_dir() for s in src.splits("mme", True)):
        tasks.append("mme")
    if any(any(src.eval_set("captions", s, validation=True).path.glob("**/instances*.json"))
           for s in src.splits("captions", True)):
        tasks.append("chair")
    folder = layout(cfg).model(variant, 2)
    if not (folder / "config.json").is_file():
        raise EvalError(f"variant {variant!r} has no trained model at {folder}; run `tuna train --variant {variant}` first")
    tag_mode = variant_model(cfg, variant)["tag_mode"]
    log(f"validate {variant} ({folder}): {', '.join(tasks)}")
    metrics = evaluate_model(cfg, folder, tag_mode, b_datastores(cfg, variant, tag_mode), tasks, progress, log, root="val",
                             answers_dir=layout(cfg).validation / "answers" / variant)
    metrics.update(variant=variant, split="val", headline=headline(metrics))
    write_json(layout(cfg).validation / f"{variant}.json", metrics)
    return metrics["headline"]


def summarize(cfg: Recipe, variants: Sequence[str]) -> dict[str, dict[str, float]]:
    """Headline numbers of each evaluated variant (from their metrics.json), saved as summary.json and table.md."""
    rows = {}
    for v in variants:
        path = layout(cfg).eval / v / "metrics.json"
        if path.is_file():
            rows[v] = json.loads(path.read_text())["headline"]
    write_json(layout(cfg).eval / "summary.json", rows)
    (layout(cfg).eval / "table.md").write_text(table(rows) + "\n", encoding="utf-8")
    return rows


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.startswith("mme"):
        return f"{value:.0f}"
    return f"{100 * value:.1f}"


_SWAP_KEY = re.compile(r"finer_b@(.+?)(?<!_attrseek)_fine_em")  # direct prompting only (not ..._attrseek_fine_em)


def table(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per variant, EM/F1/CHAIR in percent, MME as its 0-800 score."""
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows.values())]
    lines = ["| variant | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for v, r in rows.items():
        lines.append(f"| {v} | " + " | ".join(_fmt(k, r.get(k)) for k, _ in cols) + " |")
    swap = {m[1]: r[k] for v, r in rows.items() if v == "tuna" for k in r if (m := _SWAP_KEY.fullmatch(k))}
    if swap:
        lines += ["", "Datastore swap (TUNA, domain-B FINER fine EM, no retraining): "
                  + ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(swap.items()))]
    return "\n".join(lines)


def probe(cfg: Recipe, force: bool = False, progress: bool = False, log: Callable[[str], None] = print) -> str:
    """The alignment diagnostics (tuna.eval.probes) on the trained TUNA and baseline -> ``eval/probes.json``;
    skipped when up to date unless ``force``. Returns the one-line summary."""
    from tuna.eval.probes import is_up_to_date as probes_up_to_date
    from tuna.eval.probes import run_probes

    if not force and probes_up_to_date(cfg):
        return f"probes: up to date ({layout(cfg).probes}); --force re-runs"
    return run_probes(cfg, progress=progress, log=log)["summary"]


__all__ = ["b_datastores", "evaluate_variant", "is_up_to_date", "probe", "summarize", "table"]
