"""`tuna run`: every step built so far, in order, each skipped when its outputs are up to date.

The same library calls the CLI verbs, the DVC stages and the KFP components make; this is the local,
one-process front door. The whole run is one MLflow parent run and each step that runs a nested
run holding its metrics. Each later step appends itself to :func:`steps`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from tuna.recipe import Recipe

if TYPE_CHECKING:
    from tuna.track import Run

Outcome = tuple[str, dict[str, float]]  # (one-line summary, metrics for the step's MLflow run)


@dataclass(frozen=True)
class Step:
    name: str
    up_to_date: Callable[[Recipe], bool]
    run: Callable[..., Outcome]  # (cfg, progress) -> outcome; (cfg, progress, run=<stage run>) when with_run
    with_run: bool = False  # the step logs to its own MLflow stage run itself (artifacts, not only metrics)


@dataclass(frozen=True)
class StepResult:
    name: str
    seconds: float
    summary: str


def _world(cfg: Recipe, progress: bool) -> Outcome:
    from tuna.world.generate import generate_world, world_dir

    m = generate_world(cfg, progress=progress)
    web = m["counts"]["web_A"] + m["counts"]["web_B"]
    return f"{web} web samples -> {world_dir(cfg)}", {k: float(v) for k, v in m["counts"].items()}


def _encoder(cfg: Recipe, progress: bool) -> Outcome:
    from tuna.retrieval.encoder import run_encoder, summary_line

    out = run_encoder(cfg, force=True, progress=progress)
    metrics = {f"zero_shot_top1_{split}": float(m["top1"]) for split, m in out["metrics"].items()
               if isinstance(m, dict) and "top1" in m}
    return f"{out['path']}: {summary_line(out['metrics'])}", metrics


def _mine(cfg: Recipe, progress: bool) -> Outcome:
    from tuna.tags.io import mine_corpus
    from tuna.tags.miner import TagMiner

    miner = TagMiner(cfg.mine)
    parts, metrics = [], {}
    for domain in ("A", "B"):
        m = mine_corpus(cfg, domain, progress=progress, miner=miner)
        parts.append(f"{domain}: {m['count']} captions, {m['skipped']} skipped")
        metrics.update({f"{domain}_captions": float(m["count"]), f"{domain}_skipped": float(m["skipped"]),
                        f"{domain}_tags_per_caption": float(m["tags_per_caption"])})
    return "; ".join(parts), metrics


def _index(cfg: Recipe, progress: bool) -> Outcome:
    from tuna.retrieval.datastore import DATASTORES, build_datastore, is_up_to_date

    parts, metrics = [], {}
    for name in DATASTORES:
        if is_up_to_date(cfg, name):
            parts.append(f"{name}: up to date")
            continue
        m = build_datastore(cfg, name, rebuild=True, progress=progress)
        parts.append(f"{name}: {m['rows']} rows, {m['skipped']} skipped")
        metrics.update({f"{name}_rows": float(m["rows"]), f"{name}_skipped": float(m["skipped"]),
                        f"{name}_build_seconds": float(m["build_seconds"])})
    return "; ".join(parts), metrics


def _lm(cfg: Recipe, progress: bool) -> Outcome:
    from tuna.lm import flat_metrics, run_lm, summary_line

    out = run_lm(cfg, force=True, progress=progress)
    return f"{out['path']}: {summary_line(out['metrics'])}", {**flat_metrics(out["metrics"]), "params": float(out["params"])}


def _lm_up_to_date(cfg: Recipe) -> bool:
    from tuna.lm import is_up_to_date

    return cfg.model.language_model is None and is_up_to_date(cfg)


def _indexes_up_to_date(cfg: Recipe) -> bool:
    from tuna.retrieval.datastore import DATASTORES, is_up_to_date

    return all(is_up_to_date(cfg, name) for name in DATASTORES)


def _tags_up_to_date(cfg: Recipe) -> bool:
    from tuna.tags.io import is_up_to_date

    return all(is_up_to_date(cfg, d) for d in ("A", "B"))


def _world_up_to_date(cfg: Recipe) -> bool:
    from tuna.world.generate import is_up_to_date

    return is_up_to_date(cfg)


def _encoder_up_to_date(cfg: Recipe) -> bool:
    from tuna.retrieval.encoder import is_up_to_date

    return cfg.model.vision_tower is None and is_up_to_date(cfg)


TRAINED_VARIANTS = ("tuna", "baseline")  # `tuna run` trains TUNA and the LLaVA baseline like for like


def variants(cfg: Recipe, ablations: bool) -> tuple[str, ...]:
    """The variants a run trains and evaluates: TUNA and the baseline, or every ``eval.ablations`` variant."""
    return tuple(dict.fromkeys(cfg.eval.ablations)) if ablations else TRAINED_VARIANTS


def _train(cfg: Recipe, progress: bool, names: tuple[str, ...] = TRAINED_VARIANTS) -> Outcome:
    import json

    from tuna.train.engine import is_up_to_date, stage_dir
    from tuna.train.launch import launch_local

    parts, metrics = [], {}
    for variant in names:
        todo = [s for s in (1, 2) if not is_up_to_date(cfg, variant, s)]
        if not todo:
            parts.append(f"{variant}: up to date")
            continue
        launch_local(cfg, "all" if todo[0] == 1 else 2, variant)  # stage 1 rerun -> stage 2 reruns too
        for stage in (1, 2) if todo[0] == 1 else (2,):
            m = json.loads((stage_dir(cfg, variant, stage) / "metrics.json").read_text())
            parts.append(f"{variant} s{stage}: loss {m['first_loss']} -> {m['final_loss']} in {m['seconds']}s")
            metrics.update({f"{variant}_s{stage}_final_loss": float(m["final_loss"]),
                            f"{variant}_s{stage}_seconds": float(m["seconds"])})
    return "; ".join(parts), metrics


def _train_up_to_date(cfg: Recipe, names: tuple[str, ...] = TRAINED_VARIANTS) -> bool:
    from tuna.train.engine import is_up_to_date

    return all(is_up_to_date(cfg, v, 2) for v in names)


def _eval(cfg: Recipe, progress: bool, names: tuple[str, ...] = TRAINED_VARIANTS, run: Run | None = None) -> Outcome:
    from tuna.eval.report import write_report
    from tuna.eval.suite import evaluate_variant, is_up_to_date, summarize

    for variant in names:
        if not is_up_to_date(cfg, variant):
            evaluate_variant(cfg, variant, progress=progress)
    rows = summarize(cfg, names)
    probes = ""
    if cfg.eval.probes:  # alignment diagnostics (eval/probes.json) before the report, which shows them
        from tuna.eval.suite import probe

        probes = "; " + probe(cfg, progress=progress)
    # The report logs its figures (artifacts report/) and the flat numbers per variant to the eval run.
    report = write_report(cfg, names, run=run, command=f"tuna run --config configs/{cfg.run.name}.yaml", log=print)
    return f"{len(rows)} variants evaluated -> {report}{probes}", {}


def _eval_up_to_date(cfg: Recipe, names: tuple[str, ...] = TRAINED_VARIANTS) -> bool:
    from tuna.eval import report
    from tuna.eval.probes import is_up_to_date as probes_up_to_date
    from tuna.eval.suite import is_up_to_date

    return (all(is_up_to_date(cfg, v) for v in names) and report.is_up_to_date(cfg, names)
            and (not cfg.eval.probes or probes_up_to_date(cfg)))


def _serve(cfg: Recipe, progress: bool) -> Outcome:
    """Export the TUNA model, serve it with tritonserver, ask one question over gRPC, stop."""
    from tuna.serve.local import demo

    out = demo(cfg)
    prov = out["provenance"]
    tags = ", ".join(prov.get("tags", [])[:3])
    return (f"gRPC answer {out['answer']!r} (datastore {prov.get('datastore')}: {tags}...) in {out['latency_s'] * 1000:.0f} ms",
            {"grpc_latency_ms": out["latency_s"] * 1000})


def _never(cfg: Recipe) -> bool:
    return False


def steps(cfg: Recipe | None = None, ablations: bool = False) -> list[Step]:
    """The chain, in order (with ``ablations``, train and eval cover every ``eval.ablations`` variant)."""
    names = variants(cfg, ablations) if cfg is not None else TRAINED_VARIANTS
    return [
        Step("world", _world_up_to_date, _world),
        Step("encoder", _encoder_up_to_date, _encoder),
        Step("mine", _tags_up_to_date, _mine),
        Step("index", _indexes_up_to_date, _index),
        Step("lm", _lm_up_to_date, _lm),
        Step("train", partial(_train_up_to_date, names=names), partial(_train, names=names)),
        Step("eval", partial(_eval_up_to_date, names=names), partial(_eval, names=names), with_run=True),
        Step("serve", _never, _serve),  # a live check of the served model: always runs (~10 s)
    ]


def run_all(cfg: Recipe, force: bool = False, progress: bool = True,
            log: Callable[[str], None] = print, ablations: bool = False) -> list[StepResult]:
    """Run every step; a step whose outputs are up to date is skipped unless ``force``.

    ``force`` reruns every step; a rerun step makes the later ones stale, so they rerun too.
    """
    from tuna import track

    results = []
    with track.pipeline_run(cfg) as parent:
        for step in steps(cfg, ablations):
            t0 = time.perf_counter()
            if not force and step.up_to_date(cfg):
                results.append(StepResult(step.name, 0.0, "up to date"))
                continue
            log(f"== {step.name}")
            with track.stage_run(step.name, cfg) as run:
                summary, metrics = step.run(cfg, progress, run=run) if step.with_run else step.run(cfg, progress)
                seconds = time.perf_counter() - t0
                run.log_metrics({**metrics, "seconds": seconds})
                run.set_tags({"tuna.summary": summary[:4000]})
            results.append(StepResult(step.name, seconds, summary))
        parent.log_metrics({f"{r.name}_seconds": r.seconds for r in results})
    return results
