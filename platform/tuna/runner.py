"""`tuna run`: every step built so far, in order, each skipped when its outputs are up to date.

The same library calls the CLI verbs, the DVC stages and the KFP components make; this is the local,
one-process front door. Each later step appends itself to :func:`steps`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tuna.config import TunaConfig


@dataclass(frozen=True)
class Step:
    name: str
    up_to_date: Callable[[TunaConfig], bool]
    run: Callable[[TunaConfig, bool], str]  # (cfg, progress) -> one-line summary


@dataclass(frozen=True)
class StepResult:
    name: str
    seconds: float
    summary: str


def _world(cfg: TunaConfig, progress: bool) -> str:
    from tuna.world.generate import generate_world, world_dir

    m = generate_world(cfg, progress=progress)
    return f"{sum(v for k, v in m['counts'].items() if k.startswith(('web_A', 'web_B')) and 'corrupt' not in k)} web samples -> {world_dir(cfg)}"


def _encoder(cfg: TunaConfig, progress: bool) -> str:
    from tuna.retrieval.encoder import run_encoder, summary_line

    out = run_encoder(cfg, force=True, progress=progress)
    return f"{out['path']}: {summary_line(out['metrics'])}"


def _mine(cfg: TunaConfig, progress: bool) -> str:
    from tuna.tags.io import mine_corpus
    from tuna.tags.miner import TagMiner

    miner = TagMiner(cfg.mine)
    parts = []
    for domain in ("A", "B"):
        m = mine_corpus(cfg, domain, progress=progress, miner=miner)
        parts.append(f"{domain}: {m['count']} captions, {m['skipped']} skipped")
    return "; ".join(parts)


def _index(cfg: TunaConfig, progress: bool) -> str:
    from tuna.retrieval.datastore import DATASTORES, build_datastore, is_up_to_date

    parts = []
    for name in DATASTORES:
        if is_up_to_date(cfg, name):
            parts.append(f"{name}: up to date")
            continue
        m = build_datastore(cfg, name, rebuild=True, progress=progress)
        parts.append(f"{name}: {m['rows']} rows, {m['skipped']} skipped")
    return "; ".join(parts)


def _indexes_up_to_date(cfg: TunaConfig) -> bool:
    from tuna.retrieval.datastore import DATASTORES, is_up_to_date

    return all(is_up_to_date(cfg, name) for name in DATASTORES)


def _tags_up_to_date(cfg: TunaConfig) -> bool:
    from tuna.tags.io import is_up_to_date

    return all(is_up_to_date(cfg, d) for d in ("A", "B"))


def _world_up_to_date(cfg: TunaConfig) -> bool:
    from tuna.world.generate import is_up_to_date

    return is_up_to_date(cfg)


def _encoder_up_to_date(cfg: TunaConfig) -> bool:
    from tuna.retrieval.encoder import is_up_to_date

    return cfg.model.vision_tower is None and is_up_to_date(cfg)


def steps() -> list[Step]:
    """The chain, in order. Every issue that lands a step appends it here."""
    return [
        Step("world", _world_up_to_date, _world),
        Step("encoder", _encoder_up_to_date, _encoder),
        Step("mine", _tags_up_to_date, _mine),
        Step("index", _indexes_up_to_date, _index),
    ]


def run_all(cfg: TunaConfig, force: bool = False, progress: bool = True,
            log: Callable[[str], None] = print) -> list[StepResult]:
    """Run every step; a step whose outputs are up to date is skipped unless ``force``.

    ``force`` reruns every step; a rerun step makes the later ones stale, so they rerun too.
    """
    results = []
    for step in steps():
        t0 = time.perf_counter()
        if not force and step.up_to_date(cfg):
            results.append(StepResult(step.name, 0.0, "up to date"))
            continue
        log(f"== {step.name}")
        summary = step.run(cfg, progress)
        results.append(StepResult(step.name, time.perf_counter() - t0, summary))
    return results
