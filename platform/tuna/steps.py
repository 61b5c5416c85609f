"""Every step of a run, declared once: what it reads, what it writes, when it is up to date, how it runs.

The CLI verbs (`tuna world` ... `tuna export`), `tuna run`, the KFP task adapters (:mod:`tuna.kfp`) and the DVC
stages (dvc.yaml, checked against :data:`STEPS` by the tests) are thin adapters over :func:`execute`, so a flag
means the same through every door:

* ``force``: redo the step even when its outputs are up to date (else each unit -- a domain, a datastore, a
  training stage, a variant -- is skipped when up to date);
* ``rebuild`` (index): drop the collection before building, even when an unfinished build could be resumed;
* ``resume`` (train): continue an interrupted stage from its newest ZeRO checkpoint.

Each run returns an :class:`Outcome`: a one-line summary, detail lines for people, numbers for MLflow, and
the manifest and metadata a KFP task publishes on its output artifact.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tuna.errors import ConfigError, TunaError
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.sources import sources
from tuna.variants import TRAINED, check_variant


@dataclass(frozen=True)
class Options:
    """What a caller asks of a step; every door builds one (see the module docstring for the flags)."""

    force: bool = False
    progress: bool = True
    log: Callable[[str], None] = print
    domains: tuple[str, ...] = ()                            # mine: () = every corpus the datastores need
    datastores: tuple[str, ...] = ()                         # index: () = every datastore
    rebuild: bool = False                                    # index
    variants: tuple[str, ...] = TRAINED                      # train, eval
    stages: tuple[int, ...] = (1, 2)                         # train
    resume: bool = False                                     # train
    probes: bool | None = None                               # eval: None = eval.probes
    report_command: str = ""                                 # eval: the command the report cites
    export_variant: str | None = None                        # export: None = serve.variant
    export_to: Path | None = None                            # export: None = the run's serve/<variant>
    trtllm: bool = False                                     # export: also the TensorRT-LLM GPU repository

    def __post_init__(self) -> None:
        for v in self.variants:
            check_variant(v)
        bad = [s for s in self.stages if s not in (1, 2)]
        if bad or not self.stages:
            raise ConfigError(f"stages: must be 1, 2 or both, got {list(self.stages)}")


@dataclass
class Outcome:
    """What one run of a step did."""

    status: str                                              # e.g. "done", "up to date", "loaded"
    summary: str                                             # one line
    lines: list[str] = field(default_factory=list)           # details for the CLI
    metrics: dict[str, float] = field(default_factory=dict)  # numbers for the step's MLflow run
    manifest: dict[str, Any] = field(default_factory=dict)   # what the KFP task writes into its artifact
    meta: dict[str, Any] = field(default_factory=dict)       # the artifact's metadata (counts, hashes, uris)


@dataclass(frozen=True)
class Step:
    """One step: its name (= the CLI verb and the DVC stage), a one-line summary, its inputs, and behaviour."""

    name: str
    summary: str
    inputs: tuple[str, ...]                                  # data: sources and upstream steps it reads
    outputs: Callable[[Recipe, Options], list[Path]]         # what it writes
    up_to_date: Callable[[Recipe, Options], bool]
    run: Callable[[Recipe, Options], Outcome]
    with_run: bool = False                                   # logs to its own MLflow run itself (eval: artifacts)


def metric_name(name: str) -> str:
    """``finer_b@B_fine_em`` -> ``finer_b_B_fine_em``: the characters MLflow and KFP accept in a metric name."""
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", name)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ world


def _world_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.world.generate import is_up_to_date

    return not sources(cfg).from_world or is_up_to_date(cfg)


def _world(cfg: Recipe, opts: Options) -> Outcome:
    from tuna.world.generate import generate_world, is_up_to_date

    root = layout(cfg).world
    if not sources(cfg).from_world:
        return Outcome("not needed", "every data source is declared in the recipe; no bundled world needed")
    status = "up to date" if not opts.force and is_up_to_date(cfg) else "generated"
    if status == "generated":
        generate_world(cfg, progress=opts.progress, log=opts.log)
    m = _read(root / "manifest.json")
    counts = m["counts"]
    web = counts.get("web_A", 0) + counts.get("web_B", 0)
    width = max(len(k) for k in counts)
    lines = ([f"world is up to date at {root} (same seed and world config); --force regenerates"] if status == "up to date"
             else [f"  {k:<{width}}  {v:>8}" for k, v in counts.items()])
    return Outcome(status, f"{web} web samples -> {root}", lines,
                   {k: float(v) for k, v in counts.items()}, m,
                   {"uri": root, "fingerprint": m["fingerprint"], "counts": counts, "digests": m["digests"],
                    "corrupt": len(m.get("corrupt", [])), "ood_classes": len(m.get("ood_classes", []))})


# ------------------------------------------------------------------------------------------ foundation models


def _encoder_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.foundation.clip import is_up_to_date

    return cfg.model.vision_tower is None and is_up_to_date(cfg)


def _encoder(cfg: Recipe, opts: Options) -> Outcome:
    from tuna.foundation.clip import run_encoder, summary_line

    out = run_encoder(cfg, force=opts.force, progress=opts.progress, log=opts.log)
    path = Path(out["path"])
    manifest = _read(path / "manifest.json") if (path / "manifest.json").is_file() else dict(out)
    top1 = {split: m["top1"] for split, m in out["metrics"].items() if isinstance(m, dict) and "top1" in m}
    line = summary_line(out["metrics"])
    return Outcome(out["status"], f"{out['path']}: {line}",
                   [f"encoder {out['path']} ({out['status']}; fingerprint {out['fingerprint']}, dim {out['dim']})", f"  {line}"],
                   {f"zero_shot_top1_{split}": float(v) for split, v in top1.items()}, manifest,
                   {"uri": path if path.exists() else str(out["path"]), "fingerprint": out["fingerprint"], "dim": out["dim"],
                    "zero_shot_top1": top1, "encoder_hash": manifest.get("encoder_hash"),
                    "corpus_hash": manifest.get("corpus_hash")})


def _lm_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.foundation.lm import is_up_to_date

    return cfg.model.language_model is None and cfg.model.llava is None and is_up_to_date(cfg)


def _lm(cfg: Recipe, opts: Options) -> Outcome:
    from tuna.foundation.lm import flat_metrics, run_lm, summary_line

    out = run_lm(cfg, force=opts.force, progress=opts.progress, log=opts.log)
    path = Path(out["path"])
    manifest = _read(path / "manifest.json") if (path / "manifest.json").is_file() else {}
    metrics = flat_metrics(out["metrics"])
    line = summary_line(out["metrics"])
    return Outcome(out["status"], f"{out['path']}: {line}",
                   [f"lm {out['path']} ({out['status']}; {out['params'] / 1e6:.2f}M parameters, vocabulary "
                    f"{out['vocab_size']}): {line}"],
                   {**metrics, "params": float(out["params"])}, manifest or json.loads(json.dumps(out, default=str)),
                   {"uri": path if path.exists() else str(out["path"]), "fingerprint": out.get("fingerprint"),
                    "params": out["params"], "vocab_size": out["vocab_size"], "weights_hash": manifest.get("weights_hash"),
                    "metrics": metrics})


# ------------------------------------------------------------------------------------------ tags and datastores


def _mine_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.tags.io import is_up_to_date

    return all(is_up_to_date(cfg, d) for d in _domains(cfg, opts))


def _domains(cfg: Recipe, opts: Options) -> list[str]:
    from tuna.tags.io import mined_domains, resolve_domains

    return [d for name in opts.domains for d in resolve_domains(cfg, name)] if opts.domains else mined_domains(cfg)


def _mine(cfg: Recipe, opts: Options) -> Outcome:
    from tuna.tags.io import MANIFEST_FILE, is_up_to_date, mine_corpus

    miner = None
    lines, metrics, per, manifests, mined = [], {}, {}, {}, False
    for domain in _domains(cfg, opts):
        target = layout(cfg).tags(domain)
        if not opts.force and is_up_to_date(cfg, domain):
            lines.append(f"  {domain}  tags are up to date at {target} (same shards and mine config); --force re-mines")
            m = _read(target / MANIFEST_FILE)
        else:
            if miner is None:
                from tuna.tags.miner import TagMiner

                miner = TagMiner(cfg.mine)
            m = mine_corpus(cfg, domain, progress=opts.progress, miner=miner)
            mined = True
            kinds = ", ".join(f"{n} {k}" for k, n in m["skipped_by_kind"].items())
            lines.append(f"  {domain}  {m['count']:>7} captions mined, {m['skipped']} skipped{f' ({kinds})' if kinds else ''}; "
                         f"{m['unique_objects']} unique objects, {m['tags_per_caption']} tags/caption; "
                         f"{m['seconds']:.1f}s ({m['captions_per_second']} captions/s) -> {target}")
        manifests[domain] = m
        metrics.update({f"{domain}_captions": float(m["count"]), f"{domain}_skipped": float(m["skipped"]),
                        f"{domain}_tags_per_caption": float(m["tags_per_caption"])})
        per[domain] = {"count": m["count"], "skipped": m["skipped"], "unique_tags": m.get("unique_tags"),
                       "unique_objects": m.get("unique_objects"), "tags_per_caption": m.get("tags_per_caption"),
                       "input_hash": m.get("input_hash"), "uri": target}
    summary = "; ".join(f"{d}: {m['count']} captions, {m['skipped']} skipped" for d, m in manifests.items())
    return Outcome("mined" if mined else "up to date", summary, lines, metrics, manifests,
                   {"uri": layout(cfg).tags_root, "domains": per})


def _datastore_names(cfg: Recipe, opts: Options) -> tuple[str, ...]:
    from tuna.retrieval.datastore import spec_of

    for name in opts.datastores:
        spec_of(cfg, name)  # an unknown name: one line naming the declared ones
    return opts.datastores or tuple(cfg.datastores)


def _index_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.retrieval.datastore import is_up_to_date

    return all(is_up_to_date(cfg, n) for n in _datastore_names(cfg, opts))


def datastore_meta(cfg: Recipe, name: str, m: dict[str, Any]) -> dict[str, Any]:
    """What a datastore's KFP artifact and the MLflow parent run record of its manifest ``m``."""
    uri = str(m.get("uri", ""))
    return {"rows": m.get("rows"), "skipped": m.get("skipped"), "collection": m.get("collection"),
            "values": m.get("values"), "corpus_hash": m.get("corpus", {}).get("hash"),
            "tags_hash": m.get("tags_hash"), "encoder": m.get("encoder", {}).get("fingerprint"),
            "index": m.get("index", {}).get("type"),
            "uri": uri if "://" in uri else Path(uri or layout(cfg).datastore(name))}


def _index(cfg: Recipe, opts: Options) -> Outcome:
    from tuna.retrieval.datastore import build_datastore, is_up_to_date, read_manifest

    lines, parts, metrics, per, manifests, built = [], [], {}, {}, {}, False
    for name in _datastore_names(cfg, opts):
        if not opts.force and not opts.rebuild and is_up_to_date(cfg, name):
            m = read_manifest(cfg, name) or {}
            parts.append(f"{name}: up to date")
            lines.append(f"  {name:<11} up to date ({m.get('rows')} rows) -> {m.get('uri')}")
        else:
            m = build_datastore(cfg, name, rebuild=opts.rebuild, progress=opts.progress, log=opts.log)
            built = True
            parts.append(f"{name}: {m['rows']} rows, {m['skipped']} skipped")
            lines.append(f"  {name:<11} {m['rows']:>7} rows  skipped {m['skipped']:>4}  index {m['index']['type']}/"
                         f"{m['index']['metric']}  encoder {m['encoder']['fingerprint']}  -> {m['uri']}")
            metrics.update({f"{name}_rows": float(m["rows"]), f"{name}_skipped": float(m["skipped"]),
                            f"{name}_build_seconds": float(m["build_seconds"])})
        manifests[name] = m
        per[name] = datastore_meta(cfg, name, m)
    return Outcome("built" if built else "up to date", "; ".join(parts), lines, metrics, manifests, {"datastores": per})


# ------------------------------------------------------------------------------------------ training


def _train_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.train.freshness import is_up_to_date

    return all(is_up_to_date(cfg, v, s) for v in opts.variants for s in opts.stages)


def _train(cfg: Recipe, opts: Options) -> Outcome:
    """Local DeepSpeed ranks; a stage that reruns makes the later stage rerun too."""
    from tuna.train.freshness import is_up_to_date, training_order
    from tuna.train.launch import launch_local

    lines, parts, metrics, manifests, trained = [], [], {}, {}, False
    for variant in training_order(cfg, opts.variants):   # a variant whose stage 2 starts another's comes first
        todo = [s for s in opts.stages if opts.force or opts.resume or not is_up_to_date(cfg, variant, s)]
        if todo:
            todo = [s for s in opts.stages if s >= todo[0]]
            launch_local(cfg, "all" if todo == [1, 2] else todo[0], variant, resume=opts.resume)
            trained = True
        if not todo:
            parts.append(f"{variant}: up to date")
        for stage in opts.stages:
            m = _read(layout(cfg).stage(variant, stage) / "metrics.json")
            manifests[f"{variant}-stage{stage}"] = m
            if stage not in todo:
                continue
            parts.append(f"{variant} s{stage}: loss {m['first_loss']} -> {m['final_loss']} in {m['seconds']}s")
            lines.append(f"{variant} stage {stage}: {m['steps']} steps on {m['world_size']} ranks, loss {m['first_loss']} -> "
                         f"{m['final_loss']}, {m['seconds']}s ({m['samples_per_s']} samples/s) -> {m['model']}")
            metrics.update({f"{variant}_s{stage}_final_loss": float(m["final_loss"]),
                            f"{variant}_s{stage}_seconds": float(m["seconds"])})
    return Outcome("trained" if trained else "up to date", "; ".join(parts), lines, metrics, manifests)


def stage_meta(cfg: Recipe, variant: str, stage: int) -> dict[str, Any]:
    """The metadata of one trained stage (what the KFP train task publishes)."""
    folder = layout(cfg).stage(variant, stage)
    m = _read(folder / "metrics.json")
    return {"variant": variant, "stage": stage, "uri": folder / "model", "fingerprint": m.get("fingerprint"),
            "steps": m.get("steps"), "first_loss": m.get("first_loss"), "final_loss": m.get("final_loss"),
            "seconds": m.get("seconds"), "world_size": m.get("world_size"), "zero_stage": m.get("zero_stage"),
            "samples_per_s": m.get("samples_per_s"), "registered": m.get("registered")}


# ------------------------------------------------------------------------------------------ evaluation


def _probes_on(cfg: Recipe, opts: Options) -> bool:
    return cfg.eval.probes if opts.probes is None else opts.probes


def _eval_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.eval import report
    from tuna.eval.probes import is_up_to_date as probes_up_to_date
    from tuna.eval.suite import is_up_to_date

    return (all(is_up_to_date(cfg, v) for v in opts.variants) and report.is_up_to_date(cfg, opts.variants)
            and (not _probes_on(cfg, opts) or probes_up_to_date(cfg)))


def evaluate(cfg: Recipe, opts: Options, run: Any = None) -> Outcome:
    """Every variant (skipped when up to date unless ``force``), the probes when on, the table and the report
    (its figures and numbers logged to ``run``, an MLflow run, when given)."""
    from tuna.eval.report import write_report
    from tuna.eval.suite import evaluate_variant, is_up_to_date, probe, summarize, table

    lines, evaluated = [], False
    for variant in opts.variants:
        if opts.force or not is_up_to_date(cfg, variant):
            evaluate_variant(cfg, variant, progress=opts.progress, log=opts.log)
            evaluated = True
        else:
            lines.append(f"eval {variant}: up to date ({layout(cfg).eval_metrics(variant)}); --force re-evaluates")
    rows = summarize(cfg, opts.variants)
    lines.append(table(rows))
    probes = ""
    if _probes_on(cfg, opts):  # alignment diagnostics (eval/probes.json), before the report that may cite them
        probes = probe(cfg, force=opts.force, progress=opts.progress, log=opts.log)
        lines.append(probes)
    command = opts.report_command or f"tuna eval --config <recipe> --variant {','.join(opts.variants)}"
    report = write_report(cfg, opts.variants, run=run, command=command, log=opts.log)
    lines.append(f"\nmetrics: {layout(cfg).eval}/<variant>/metrics.json, table: {layout(cfg).eval_table}")
    lines.append(f"report: {report}")
    metrics = {metric_name(f"{v}_{k}"): float(x) for v, r in rows.items() for k, x in r.items()
               if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)}
    return Outcome("evaluated" if evaluated else "up to date",
                   f"{len(rows)} variants evaluated -> {report}" + (f"; {probes}" if probes else ""), lines, metrics,
                   {"headline": rows, "table": table(rows)},
                   {"variants": list(opts.variants), "uri": layout(cfg).eval, "report": report, "headline": rows})


def _eval(cfg: Recipe, opts: Options, run: Any = None) -> Outcome:
    return evaluate(cfg, opts, run=run)


# ------------------------------------------------------------------------------------------ export and serve


def _export_variant(cfg: Recipe, opts: Options) -> str:
    return check_variant(opts.export_variant or cfg.serve.variant)


def _export_up_to_date(cfg: Recipe, opts: Options) -> bool:
    from tuna.serve.export import is_up_to_date

    return opts.export_to is None and not opts.trtllm and is_up_to_date(cfg, _export_variant(cfg, opts))


def _export(cfg: Recipe, opts: Options) -> Outcome:
    from tuna.serve.export import export_repository

    variant = _export_variant(cfg, opts)
    target = opts.export_to or layout(cfg).export(variant)
    status = "up to date"
    if opts.force or not _export_up_to_date(cfg, opts):
        export_repository(cfg, variant, out=opts.export_to, trtllm=opts.trtllm, log=opts.log)
        status = "exported"
    m = _read(target / "export.json")
    repo = target / m["repository"]
    lines = [f"  repository: {repo}  (serve it: tuna serve --config <recipe>)"]
    if "trtllm" in m:
        lines.append(f"  GPU: {target / m['trtllm']['repository']}  (TensorRT-LLM PyTorch LLM API, {m['trtllm']['dtype']}; "
                     f"serve it in the GPU serving image: helm/tuna-serving/ci/gpu-trtllm-values.yaml)")
    return Outcome(status, f"{status} {variant} ({m['model']['digest']}) -> {repo}", lines, {"files": float(len(m["files"]))}, m,
                   {"variant": variant, "uri": repo, "path": str(repo), "model_digest": m["model"]["digest"],
                    "registered_name": m["model"]["name"],
                    "datastores": {n: d["version"] for n, d in m.get("datastores", {}).items()},
                    "default_datastore": m.get("default_datastore"), "files": len(m.get("files", {})),
                    "trtllm": m.get("trtllm", {}).get("repository"),
                    "trtllm_path": str(target / m["trtllm"]["repository"]) if "trtllm" in m else None})


def _serve(cfg: Recipe, opts: Options) -> Outcome:
    """Export when stale, serve with tritonserver, ask one question over gRPC, stop: a live check (~10 s)."""
    from tuna.serve.local import demo

    out = demo(replace(cfg, serve=replace(cfg.serve, variant=_export_variant(cfg, opts))), log=opts.log)
    prov = out["provenance"]
    tags = ", ".join(prov.get("tags", [])[:3])
    return Outcome("served", f"gRPC answer {out['answer']!r} (datastore {prov.get('datastore')}: {tags}...) in "
                   f"{out['latency_s'] * 1000:.0f} ms", [], {"grpc_latency_ms": out["latency_s"] * 1000}, out, {})


def _never(cfg: Recipe, opts: Options) -> bool:
    return False


# ------------------------------------------------------------------------------------------ the steps


def _world_outputs(cfg: Recipe, opts: Options) -> list[Path]:
    return [layout(cfg).world]


STEPS: dict[str, Step] = {s.name: s for s in (
    Step("world", "generate the bundled world: taxonomies, images and every corpus in real formats",
         (), _world_outputs, _world_up_to_date, _world),
    Step("encoder", "train the tiny CLIP on the web corpora (or load model.vision_tower); zero-shot accuracy",
         ("web_A", "web_B", "web_clip", "taxonomy", "finer_id", "finer_ood", "finer_b"),
         lambda cfg, o: [layout(cfg).encoder], _encoder_up_to_date, _encoder),
    Step("mine", "mine tags (objects, attributes, entities) from the web captions with spaCy",
         ("web_A", "web_B"), lambda cfg, o: [layout(cfg).tags(d) for d in _domains(cfg, o)], _mine_up_to_date, _mine),
    Step("index", "embed the web corpora and build the Milvus datastores (resumable)",
         ("web_A", "web_B", "encoder", "mine"), lambda cfg, o: [layout(cfg).datastore(n) for n in _datastore_names(cfg, o)],
         _index_up_to_date, _index),
    Step("lm", "train the tokenizer and tiny Llama on the text sources (or load model.language_model / model.llava's LM)",
         ("text", "alignment", "instruction", "taxonomy"), lambda cfg, o: [layout(cfg).lm], _lm_up_to_date, _lm),
    Step("train", "train stages 1 and 2 with DeepSpeed ZeRO on local ranks",
         ("alignment", "instruction", "taxonomy", "encoder", "lm", "index"),
         lambda cfg, o: [layout(cfg).stage(v, s) for v in o.variants for s in o.stages], _train_up_to_date, _train),
    Step("eval", "evaluate the variants (POPE, FINER, MME, CHAIR, the datastore swap), the table and the report",
         ("pope_id", "pope_ood", "finer_id", "finer_ood", "finer_b", "mme_id", "mme_ood", "captions_id", "captions_ood",
          "taxonomy", "train", "index"),
         lambda cfg, o: [layout(cfg).eval_metrics(v) for v in o.variants] + [layout(cfg).report], _eval_up_to_date, _eval,
         with_run=True),
    Step("export", "export a trained variant as a Triton model repository",
         ("train", "index"), lambda cfg, o: [o.export_to or layout(cfg).export(_export_variant(cfg, o))],
         _export_up_to_date, _export),
    Step("serve", "serve the exported variant with tritonserver and ask it one question over gRPC",
         ("export",), lambda cfg, o: [], _never, _serve),
)}
RUN_ORDER = ("world", "encoder", "mine", "index", "lm", "train", "eval", "serve")  # `tuna run`


def execute(name: str, cfg: Recipe, opts: Options | None = None, run: Any = None) -> Outcome:
    """Run step ``name`` on ``cfg`` (each unit skipped when up to date unless ``opts.force``)."""
    if name not in STEPS:
        raise TunaError(f"unknown step {name!r}; known: {', '.join(STEPS)}")
    step = STEPS[name]
    opts = opts or Options()
    return step.run(cfg, opts, run=run) if step.with_run else step.run(cfg, opts)


def run_steps(names: Sequence[str] = RUN_ORDER) -> list[Step]:
    return [STEPS[n] for n in names]


__all__ = ["RUN_ORDER", "STEPS", "Options", "Outcome", "Step", "datastore_meta", "evaluate", "execute", "metric_name", "run_steps", "stage_meta"]
