"""`tuna run`: every step of :data:`tuna.steps.RUN_ORDER`, in order, each skipped when its outputs are up to date.

The local, one-process front door over :mod:`tuna.steps` (the CLI verbs, DVC stages and KFP tasks call the
same steps). The whole run is one MLflow parent run, and each step that runs a nested run holding its metrics;
before training, a nested ``plan`` run holds `tuna plan`'s parameter counts and memory estimates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tuna.recipe import Recipe
from tuna.steps import RUN_ORDER, Options, run_steps
from tuna.variants import run_variants


@dataclass(frozen=True)
class StepResult:
    name: str
    seconds: float
    summary: str


def run_all(cfg: Recipe, force: bool = False, progress: bool = True,
            log: Callable[[str], None] = print, ablations: bool = False) -> list[StepResult]:
    """Run every step; a step whose outputs are up to date is skipped unless ``force``.

    With ``ablations``, train and eval cover every ``eval.ablations`` variant. ``force`` reruns every step.
    """
    from tuna import track
    from tuna.datacheck import preflight
    from tuna.sources import sources

    preflight(sources(cfg).all())   # a user's bad input fails here in one line, before any step runs
    opts = Options(force=force, progress=progress, log=log, variants=run_variants(cfg, ablations),
                   report_command=f"tuna run --config configs/{cfg.run.name}.yaml{' --ablations' if ablations else ''}")
    results = []
    with track.pipeline_run(cfg) as parent:
        for step in run_steps(RUN_ORDER):
            if step.name == "train":   # encoder and LM are in place: the parameter and memory plan goes with the run
                log_run_plan(cfg, log)
            t0 = time.perf_counter()
            if not force and step.up_to_date(cfg, opts):
                results.append(StepResult(step.name, 0.0, "up to date"))
                continue
            log(f"== {step.name}")
            with track.stage_run(step.name, cfg) as run:
                out = step.run(cfg, opts, run=run) if step.with_run else step.run(cfg, opts)
                seconds = time.perf_counter() - t0
                run.log_metrics({**out.metrics, "seconds": seconds})
                run.set_tags({"tuna.summary": out.summary[:4000]})
            results.append(StepResult(step.name, seconds, out.summary))
        parent.log_metrics({f"{r.name}_seconds": r.seconds for r in results})
    return results


def log_run_plan(cfg: Recipe, log: Callable[[str], None] = print) -> str | None:
    """Log `tuna plan` for the recipe as a nested ``plan`` run of the open pipeline run; returns its id.

    A recipe whose sizes cannot be resolved (a hub id without ``plan:`` sizes) gets one line saying so instead.
    """
    from tuna.plan import PlanError, log_plan, make_plan

    try:
        plan = make_plan(cfg)
    except PlanError as err:
        log(f"== plan: not logged: {err}")
        return None
    return log_plan(plan, cfg)


__all__ = ["StepResult", "log_run_plan", "run_all"]
