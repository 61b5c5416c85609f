"""`tuna run --seeds N`: the whole run once per seed, then every headline number as mean +- spread per variant.

Seed ``s`` runs the recipe with ``run.seed = s`` (world, encoder, LM, datastores, training and eval all drawn
again), the first seed in the recipe's own ``run.data_dir``, the others in ``<data_dir>/seeds/<s>``; each is
an ordinary run, so an interrupted study picks up where it stopped (up-to-date steps are skipped). The study's
table goes to ``<data_dir>/eval/seeds.md`` and ``seeds.json``. A difference counts as a claim only when it holds
on the means and the [min, max] ranges of the two variants do not overlap (:func:`separated`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path

from tuna.errors import ConfigError
from tuna.eval.suite import COLUMNS
from tuna.layout import layout
from tuna.recipe import Recipe

MAX_SEEDS = 20


@dataclasses.dataclass(frozen=True)
class Spread:
    """One metric of one variant over the seeds."""

    mean: float
    std: float       # sample standard deviation (0 for one seed)
    low: float
    high: float
    n: int


def seed_recipes(cfg: Recipe, n: int) -> list[Recipe]:
    """The recipes of an ``n``-seed study: seeds run.seed .. run.seed + n - 1, each with its own data folder."""
    if not 1 <= n <= MAX_SEEDS:
        raise ConfigError(f"--seeds must be in 1..{MAX_SEEDS}, got {n}")
    out = []
    for k in range(n):
        seed = cfg.run.seed + k
        data_dir = cfg.run.data_dir if k == 0 else str(Path(cfg.run.data_dir) / "seeds" / str(seed))
        out.append(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed, data_dir=data_dir)))
    return out


def aggregate(rows_by_seed: Mapping[int, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, Spread]]:
    """variant -> metric -> :class:`Spread` over the seeds that report it (``rows_by_seed``: seed -> the
    run's eval/summary.json, variant -> headline metric -> value)."""
    values: dict[str, dict[str, list[float]]] = {}
    for rows in rows_by_seed.values():
        for variant, headline in rows.items():
            for key, value in headline.items():
                values.setdefault(variant, {}).setdefault(key, []).append(float(value))
    return {v: {k: Spread(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, min(xs), max(xs), len(xs))
                for k, xs in sorted(metrics.items())}
            for v, metrics in values.items()}


def separated(a: Spread, b: Spread) -> bool:
    """True when ``a`` beats ``b`` on the mean and the seeds' ranges do not overlap (a.low > b.high)."""
    return a.mean > b.mean and a.low > b.high


def _fmt(key: str, s: Spread) -> str:
    scale, digits = (1.0, 0) if key.startswith("mme") else (100.0, 1)
    return f"{scale * s.mean:.{digits}f} ± {scale * s.std:.{digits}f} [{scale * s.low:.{digits}f}, {scale * s.high:.{digits}f}]"


def seeds_table(agg: Mapping[str, Mapping[str, Spread]], seeds: list[int]) -> str:
    """Markdown: one row per variant, each headline column as mean ± std [min, max] over ``seeds``."""
    cols = [(k, h) for k, h in COLUMNS if any(k in m for m in agg.values())]
    lines = [f"Seeds {', '.join(map(str, seeds))}: mean ± std [min, max] (percent; MME in points)", "",
             "| variant | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for v, metrics in agg.items():
        lines.append(f"| {v} | " + " | ".join(_fmt(k, metrics[k]) if k in metrics else "-" for k, _ in cols) + " |")
    return "\n".join(lines)


def run_seeds(cfg: Recipe, n: int, run: Callable[[Recipe], object], log: Callable[[str], None] = print
              ) -> dict[str, dict[str, Spread]]:
    """Run ``run`` (one whole pipeline run) for each seed's recipe, then aggregate their eval summaries into
    ``<data_dir>/eval/seeds.{json,md}``. A seed whose run left no summary stops the study with one line."""
    recipes = seed_recipes(cfg, n)
    rows: dict[int, dict[str, dict[str, float]]] = {}
    for r in recipes:
        log(f"=== seed {r.run.seed} ({r.run.data_dir})")
        run(r)
        summary = layout(r).eval / "summary.json"
        if not summary.is_file():
            raise ConfigError(f"seed {r.run.seed}: the run wrote no {summary}; is `eval` in the run's steps?")
        rows[r.run.seed] = json.loads(summary.read_text(encoding="utf-8"))
    agg = aggregate(rows)
    out = layout(cfg).eval
    out.mkdir(parents=True, exist_ok=True)
    payload = {"seeds": sorted(rows), "per_seed": {str(s): r for s, r in rows.items()},
               "spread": {v: {k: dataclasses.asdict(s) for k, s in m.items()} for v, m in agg.items()}}
    (out / "seeds.json").write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    (out / "seeds.md").write_text(seeds_table(agg, sorted(rows)) + "\n", encoding="utf-8")
    return agg


__all__ = ["Spread", "aggregate", "run_seeds", "seed_recipes", "seeds_table", "separated"]
