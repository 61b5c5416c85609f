"""The task functions the components (``components/<step>/component.py``, package ``tuna_components``) call.

Each ``run_<step>`` loads the recipe with the overrides the ``validate`` task resolved, calls the step's library
function (skipped when its outputs are up to date, like ``tuna run``) and returns a :class:`TaskResult` whose
manifest the component writes into its output artifact and whose metadata (counts, hashes, fingerprints, uri) it
attaches. Steps share data through ``run.data_dir`` (a PVC on a cluster); artifacts carry provenance. A user error
ends the task with one line (:func:`task`). The functions run in every pipeline pod and never import kfp.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tuna import __version__
from tuna.errors import TunaError
from tuna.kfp.options import DEPLOY_TARGETS, LAUNCHERS, PIPELINE_NAME, SERVING_SOURCES, PipelineError
from tuna.kfp.task_io import (
    TaskResult,
    _data_dir_override,
    _load,
    _message,
    _metric_name,
    _numbers,
    _plain,
    _provenance,
    _read_json,
    _stage,
    _uri,
    publish,
    publish_markdown,
    publish_metrics,
    task,
)
from tuna.kfp.validate import validate_inputs
from tuna.recipe import Recipe


def start_run(config: str, overrides: Sequence[str], data: Mapping[str, Mapping[str, Any]]) -> str:
    """Open this pipeline run's MLflow parent run (params = the recipe; metrics and tags = the data steps'
    artifacts metadata) and return its id; training, eval, export, register and deploy nest under it."""
    from tuna import track

    cfg = _load(config, overrides)
    with track.pipeline_run(cfg, name=f"{cfg.run.name}-kfp") as run:
        run.set_tags({"tuna.front_door": "kfp"})
        metrics: dict[str, float] = {}
        tags: dict[str, str] = {}
        for step, meta in data.items():
            metrics.update({_metric_name(f"data.{step}.{k}"): v for k, v in _numbers(meta).items()
                            if k not in ("seed",)})
            for key in ("fingerprint", "uri", "status", "encoder_hash", "weights_hash"):
                if isinstance(meta.get(key), str):
                    tags[f"tuna.data.{step}.{key}"] = meta[key]
        run.log_metrics(metrics)
        run.set_tags(tags)
        return run.run_id or ""


# --------------------------------------------------------------------------------------------- data steps


def run_world(config: str, overrides: Sequence[str]) -> TaskResult:
    """`tuna world`: generate the bundled world (skipped when up to date)."""
    from tuna.world.generate import generate_world, is_up_to_date, world_dir

    cfg = _load(config, overrides)
    status = "up to date" if is_up_to_date(cfg) else "generated"
    if status == "generated":
        generate_world(cfg, progress=False)
    root = world_dir(cfg)
    m = _read_json(root / "manifest.json")
    meta = {**_provenance(cfg, "world", status), "uri": _uri(cfg, root), "fingerprint": m["fingerprint"],
            "counts": m["counts"], "digests": m["digests"], "corrupt": len(m.get("corrupt", [])),
            "ood_classes": len(m.get("ood_classes", []))}
    web = m["counts"].get("web_A", 0) + m["counts"].get("web_B", 0)
    return TaskResult(m, meta, f"world {status}: {web} web samples -> {root}")


def run_encoder_step(config: str, overrides: Sequence[str]) -> TaskResult:
    """`tuna encoder`: train the tiny CLIP (or load model.vision_tower); zero-shot accuracy per split."""
    from tuna.retrieval.encoder import run_encoder, summary_line

    cfg = _load(config, overrides)
    out = run_encoder(cfg, force=False, progress=False)
    path = Path(out["path"])
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else dict(out)
    top1 = {split: m["top1"] for split, m in out["metrics"].items() if isinstance(m, dict) and "top1" in m}
    meta = {**_provenance(cfg, "encoder", out["status"]), "uri": _uri(cfg, path) if path.exists() else str(out["path"]),
            "fingerprint": out["fingerprint"], "dim": out["dim"], "zero_shot_top1": top1,
            "encoder_hash": manifest.get("encoder_hash"), "corpus_hash": manifest.get("corpus_hash")}
    return TaskResult(manifest, meta, f"encoder {out['status']}: {summary_line(out['metrics'])}")


def run_mine(config: str, overrides: Sequence[str], domain: str = "all") -> TaskResult:
    """`tuna mine`: mine tags from the web captions of domain A, B or all (each skipped when up to date)."""
    from tuna.tags.io import (
        MANIFEST_FILE,
        is_up_to_date,
        mine_corpus,
        resolve_domains,
        tags_dir,
    )

    cfg = _load(config, overrides)
    if domain not in ("A", "B", "all"):
        raise PipelineError(f"domain: {domain!r} is not one of A, B, all")
    miner = None
    per: dict[str, Any] = {}
    manifests: dict[str, Any] = {}
    statuses = []
    for d in resolve_domains(domain):
        if is_up_to_date(cfg, d):
            statuses.append("up to date")
        else:
            if miner is None:
                from tuna.tags.miner import TagMiner

                miner = TagMiner(cfg.mine)
            mine_corpus(cfg, d, progress=False, miner=miner)
            statuses.append("mined")
        m = _read_json(tags_dir(cfg, d) / MANIFEST_FILE)
        manifests[d] = m
        per[d] = {"count": m["count"], "skipped": m["skipped"], "unique_tags": m.get("unique_tags"),
                  "unique_objects": m.get("unique_objects"), "tags_per_caption": m.get("tags_per_caption"),
                  "input_hash": m.get("input_hash"), "uri": _uri(cfg, tags_dir(cfg, d))}
    status = "up to date" if all(s == "up to date" for s in statuses) else "mined"
    meta = {**_provenance(cfg, "mine", status), "uri": _uri(cfg, cfg.data_dir / "tags"), "domains": per}
    return TaskResult(manifests, meta, "; ".join(f"{d}: {p['count']} captions" for d, p in per.items()))


def run_index(config: str, overrides: Sequence[str], datastore: str = "all") -> TaskResult:
    """`tuna index`: build datastore A, B, A_captions or all (each skipped when up to date)."""
    from tuna.retrieval.datastore import (
        DATASTORES,
        build_datastore,
        datastore_dir,
        is_up_to_date,
        read_manifest,
        spec_of,
    )

    cfg = _load(config, overrides)
    if datastore != "all":
        spec_of(datastore)  # an unknown name: one line listing the known ones
    names = list(DATASTORES) if datastore == "all" else [datastore]
    per: dict[str, Any] = {}
    manifests: dict[str, Any] = {}
    statuses = []
    for name in names:
        if is_up_to_date(cfg, name):
            statuses.append("up to date")
        else:
            build_datastore(cfg, name, rebuild=True, progress=False)
            statuses.append("built")
        m = read_manifest(cfg, name) or {}
        manifests[name] = m
        uri = m.get("uri", "")
        per[name] = {"rows": m.get("rows"), "skipped": m.get("skipped"), "collection": m.get("collection"),
                     "values": m.get("values"), "corpus_hash": m.get("corpus", {}).get("hash"),
                     "tags_hash": m.get("tags_hash"), "encoder": m.get("encoder", {}).get("fingerprint"),
                     "index": m.get("index", {}).get("type"),
                     "uri": uri if "://" in str(uri) else _uri(cfg, uri or datastore_dir(cfg, name))}
    status = "up to date" if all(s == "up to date" for s in statuses) else "built"
    meta = {**_provenance(cfg, "index", status), "datastores": per}
    if len(names) == 1:
        meta.update({"name": names[0], **per[names[0]]})
        manifests = manifests[names[0]]
    return TaskResult(manifests, meta, "; ".join(f"{n}: {p['rows']} rows" for n, p in per.items()))


def run_lm_step(config: str, overrides: Sequence[str]) -> TaskResult:
    """`tuna lm`: train the tokenizer and tiny Llama (or load model.language_model)."""
    from tuna.lm import flat_metrics, run_lm, summary_line

    cfg = _load(config, overrides)
    out = run_lm(cfg, force=False, progress=False, log=print)
    path = Path(out["path"])
    manifest = _read_json(path / "manifest.json") if (path / "manifest.json").is_file() else {}
    meta = {**_provenance(cfg, "lm", out["status"]), "uri": _uri(cfg, path) if path.exists() else str(out["path"]),
            "fingerprint": out.get("fingerprint"), "params": out["params"], "vocab_size": out["vocab_size"],
            "weights_hash": manifest.get("weights_hash"), "metrics": flat_metrics(out["metrics"])}
    return TaskResult(manifest or _plain(out), meta, f"lm {out['status']}: {summary_line(out['metrics'])}")


# --------------------------------------------------------------------------------------------- training


@contextlib.contextmanager
def _nested_under(cfg: Recipe, parent: str) -> Iterator[None]:
    """Export the parent run id and tracking URI so the DeepSpeed ranks' runs nest under the pipeline run."""
    from tuna import track

    values = {track.TRACKING_URI_ENV: track.tracking_uri(cfg)}
    if parent:
        values[track.PARENT_RUN_ENV] = parent
    with track.exported_env(values):
        yield


def run_train(config: str, overrides: Sequence[str], parent: str, stage: int, variant: str,
              launcher: str = "local") -> TaskResult:
    """`tuna train --stage N --variant V`: local DeepSpeed ranks, or a TrainJob / PyTorchJob followed to the end."""
    if stage not in (1, 2) or isinstance(stage, bool):
        raise PipelineError(f"stage: must be 1 or 2, got {stage!r}")
    if launcher not in LAUNCHERS:
        raise PipelineError(f"launcher: {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    cfg = _load(config, overrides)
    from tuna.train.engine import is_up_to_date, stage_dir, variant_model

    variant_model(cfg, variant)  # an unknown variant fails here, before any process starts
    status = "up to date"
    if not is_up_to_date(cfg, variant, stage):
        status = "trained"
        with _nested_under(cfg, parent):
            if launcher == "local":
                from tuna.train.launch import launch_local

                launch_local(cfg, stage, variant)
            else:
                from tuna.train import cluster

                state = cluster.launch(cfg, stage, variant, [str(o) for o in overrides], launcher=launcher,
                                       recipe=config)
                if state != "Succeeded":
                    raise PipelineError(f"stage {stage} of {variant!r} ended {state} on the cluster; see `kubectl "
                                        f"describe` of the job named above, then rerun the pipeline")
    folder = stage_dir(cfg, variant, stage)
    m = _read_json(folder / "metrics.json")
    meta = {**_provenance(cfg, f"train-{variant}-stage{stage}", status), "variant": variant, "stage": stage,
            "launcher": launcher, "uri": _uri(cfg, folder / "model"), "fingerprint": m.get("fingerprint"),
            "steps": m.get("steps"), "first_loss": m.get("first_loss"), "final_loss": m.get("final_loss"),
            "seconds": m.get("seconds"), "world_size": m.get("world_size"), "zero_stage": m.get("zero_stage"),
            "samples_per_s": m.get("samples_per_s"), "registered": m.get("registered")}
    return TaskResult(m, meta, f"{variant} stage {stage} {status}: loss {m.get('first_loss')} -> {m.get('final_loss')}")


# --------------------------------------------------------------------------------------------- evaluation


def run_evaluate(config: str, overrides: Sequence[str], parent: str, variants: Sequence[str]) -> tuple[TaskResult, str]:
    """`tuna eval`: every variant (skipped when up to date), the table and the report (logged to an `eval` run).

    Returns the result (metrics = the headline numbers per variant, ``<variant>_<metric>``) and report.md's text.
    """
    from tuna.eval.report import write_report
    from tuna.eval.suite import (
        eval_dir,
        evaluate_variant,
        is_up_to_date,
        summarize,
        table,
    )
    from tuna.train.engine import VARIANTS as KNOWN

    names = list(dict.fromkeys(str(v) for v in variants if v))
    if not names or any(v not in KNOWN for v in names):
        raise PipelineError(f"variants: {list(variants)!r} must name trained variants among {', '.join(KNOWN)}")
    cfg = _load(config, overrides)
    statuses = {}
    for v in names:
        if is_up_to_date(cfg, v):
            statuses[v] = "up to date"
        else:
            evaluate_variant(cfg, v, progress=False)
            statuses[v] = "evaluated"
    if cfg.eval.probes:
        from tuna.eval.suite import probe

        print(probe(cfg, progress=False))
    rows = summarize(cfg, names)
    with _stage(cfg, parent, "eval") as run:
        report = write_report(cfg, names, run=run, command=f"tuna pipeline (task evaluate) --config {config}")
        mlflow_run = run.run_id
    metrics = {_metric_name(f"{v}_{k}"): float(x) for v, r in rows.items() for k, x in r.items()
               if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)}
    status = "up to date" if all(s == "up to date" for s in statuses.values()) else "evaluated"
    meta = {**_provenance(cfg, "eval", status), "variants": names, "uri": _uri(cfg, eval_dir(cfg)),
            "report": _uri(cfg, report), "mlflow_run_id": mlflow_run, "headline": rows}
    text = report.read_text(encoding="utf-8")
    return TaskResult({"headline": rows, "table": table(rows)}, meta, f"{len(rows)} variants -> {report}", metrics), text


# --------------------------------------------------------------------------------------------- export, register, deploy


def run_export(config: str, overrides: Sequence[str], parent: str, variant: str, out_root: str = "",
               trtllm: bool = False) -> TaskResult:
    """`tuna export`: the variant's Triton model repository, under ``<out_root>/<run>/serve/<variant>`` when
    ``out_root`` is set (the checkpoints PVC on a cluster), else ``<data_dir>/serve/<variant>``."""
    from tuna.serve.export import export_dir, export_repository, is_up_to_date

    cfg = _load(config, overrides)
    target = Path(out_root) / cfg.run.name / "serve" / variant if out_root else export_dir(cfg, variant)
    if not out_root and not trtllm and is_up_to_date(cfg, variant):
        status = "up to date"
    else:
        with _stage(cfg, parent, f"export-{variant}") as run:
            t0 = time.perf_counter()
            m = export_repository(cfg, variant, out=target if out_root else None, trtllm=trtllm)
            run.log_metrics({"files": len(m["files"]), "seconds": time.perf_counter() - t0})
            run.set_tags({"tuna.variant": variant, "tuna.model_digest": m["model"]["digest"],
                          "tuna.repository": str(target / m["repository"])})
        status = "exported"
    m = _read_json(target / "export.json")
    repo = target / m["repository"]
    meta = {**_provenance(cfg, "export", status), "variant": variant, "uri": _uri(cfg, repo), "path": str(repo),
            "model_digest": m["model"]["digest"], "registered_name": m["model"]["name"],
            "datastores": {n: d["version"] for n, d in m.get("datastores", {}).items()},
            "default_datastore": m.get("default_datastore"), "files": len(m.get("files", {})),
            "trtllm": m.get("trtllm", {}).get("repository")}
    return TaskResult(m, meta, f"exported {variant} ({m['model']['digest']}) -> {repo}")


def run_register(config: str, overrides: Sequence[str], parent: str, repository: Mapping[str, Any],
                 metrics: Mapping[str, Any], alias: str = "evaluated", gate_metric: str = "",
                 gate_min: float = 0.0) -> str:
    """Register the exported Triton repository as a new version of ``<registered model>-serving`` with ``alias``.

    The version's run holds the repository (``model_repository/``) and the evaluation's headline metrics. With
    ``gate_metric`` set, nothing is registered unless that metric is >= ``gate_min``; then "" is returned.
    Returns ``models:/<name>@<alias>`` (what the Helm chart's mlflow source and ``deploy`` read).
    """
    from tuna import track
    from tuna.train.engine import registered_name

    cfg = _load(config, overrides)
    numbers = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if gate_metric:
        gate_metric = _metric_name(gate_metric)  # as evaluate logs it (finer_b@B -> finer_b_B)
        if gate_metric not in numbers:
            raise PipelineError(f"gate_metric: {gate_metric!r} is not among the evaluation metrics "
                                f"({', '.join(sorted(numbers)[:12])}{', ...' if len(numbers) > 12 else ''})")
        if numbers[gate_metric] < gate_min:
            print(f"register: not registered: {gate_metric} = {numbers[gate_metric]:.4f} < gate_min {gate_min}")
            return ""
    variant = str(repository.get("variant") or cfg.serve.variant)
    path = Path(str(repository.get("path", "")))
    if not (path / "tuna" / "config.pbtxt").is_file():
        raise PipelineError(f"repository {str(path)!r} holds no Triton ensemble (tuna/config.pbtxt); run the export "
                            f"step first")
    name = f"{registered_name(cfg, variant)}-serving"
    with _stage(cfg, parent, f"register-{variant}") as run:
        run.log_artifact(path, "model_repository")
        run.log_metrics({_metric_name(k): v for k, v in numbers.items()})
        run.set_tags({"tuna.variant": variant, "tuna.model_digest": str(repository.get("model_digest", "")),
                      "tuna.alias": alias})
        if not run.enabled:
            return ""
        version = track.register_model(run.run_id, "model_repository", name, alias=alias, cfg=cfg)
    print(f"register: {name} version {version} -> alias {alias!r}")
    return f"models:/{name}@{alias}"


def run_deploy(config: str, overrides: Sequence[str], parent: str, repository: Mapping[str, Any], target: str = "local",
               registered: str = "", serving_source: str = "pvc", chart: str = "helm/tuna-serving",
               release: str = "tuna-serving", namespace: str = "tuna", values_files: Sequence[str] = (),
               repository_pvc: str = "", repository_mount: str = "") -> str:
    """Serve the exported repository: ``local`` runs the tritonserver demo (start, one gRPC question, stop);
    ``helm`` runs ``helm upgrade --install`` with the repository on its PVC (or the registered MLflow version);
    ``none`` does nothing. Returns a one-line summary."""
    if target not in DEPLOY_TARGETS:
        raise PipelineError(f"target: {target!r} is not one of {', '.join(DEPLOY_TARGETS)}")
    if target == "none":
        return "deploy skipped (deploy_target=none)"
    cfg = _load(config, overrides)
    variant = str(repository.get("variant") or cfg.serve.variant)
    if target == "local":
        from tuna.serve.local import demo

        cfg = replace(cfg, serve=replace(cfg.serve, variant=variant))
        with _stage(cfg, parent, "deploy") as run:
            out = demo(cfg)
            run.log_metrics({"grpc_latency_ms": out["latency_s"] * 1000})
            run.set_tags({"tuna.answer": out["answer"][:4000], "tuna.target": "local",
                          "tuna.datastore": str(out["provenance"].get("datastore"))})
        return f"gRPC answer {out['answer']!r} in {out['latency_s'] * 1000:.0f} ms"
    from tuna.serve.deploy import deploy_helm, pvc_uri

    if serving_source == "mlflow":
        if not registered:
            raise PipelineError("serving_source=mlflow but no model version was registered (the gate refused it or "
                                "register_model did not run); deploy from the PVC or lower gate_min")
        uri = registered
    elif serving_source == "pvc":
        if not repository_pvc or not repository_mount:
            raise PipelineError("serving_source=pvc needs the PVC holding the exported repository and its mount path")
        uri = pvc_uri(str(repository.get("path", "")), repository_pvc, repository_mount)
    else:
        raise PipelineError(f"serving_source: {serving_source!r} is not one of {', '.join(SERVING_SOURCES)}")
    out = deploy_helm(cfg, release, namespace, uri, [str(f) for f in values_files], chart)
    with _stage(cfg, parent, "deploy") as run:
        run.set_tags({"tuna.target": "helm", "tuna.release": f"{namespace}/{release}", "tuna.repository": uri,
                      "tuna.helm": out[-4000:]})
    return f"helm release {namespace}/{release} serves {uri}"


# --------------------------------------------------------------------------------------------- exit handler


def run_notify(config: str, overrides: Sequence[str], status: Mapping[str, Any], data_root: str = "",
               target: str = "local", webhook: str = "") -> str:
    """The exit handler: record the pipeline's final status, clean up, optionally POST it to ``webhook``.

    Writes ``<data_dir>/kfp/status.jsonl`` (one line per run), removes half-written export folders
    (``<data_dir>/serve/*.tmp``) and returns the one-line status. Never fails the pipeline on its own
    account: a recipe that does not load or an unreachable webhook is reported, not raised.
    """
    state = str(status.get("state") or "UNKNOWN")
    job = str(status.get("pipeline_job_resource_name") or "")
    error = str(status.get("error_message") or "").strip()
    line = f"pipeline {job or PIPELINE_NAME}: {state}" + (f" ({error.splitlines()[0][:300]})" if error else "")
    record = {"state": state, "job": job, "task": status.get("pipeline_task_name"), "error": error or None,
              "error_code": status.get("error_code"), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "tuna_version": __version__}
    try:
        written = _load(config, overrides)
        cfg = _load(config, [*overrides, *(_data_dir_override(written, data_root) if target == "kubernetes" else [])])
    except TunaError as err:
        print(f"notify: recipe does not load ({_message(err)}); status not written")
        cfg = None
    if cfg is not None:
        folder = cfg.data_dir / "kfp"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "status.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        for stale in sorted((cfg.data_dir / "serve").glob("*.tmp")):
            shutil.rmtree(stale, ignore_errors=True)
            print(f"notify: removed half-written export {stale}")
    if webhook:
        request = urllib.request.Request(webhook, data=json.dumps({"text": line, **record}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except (urllib.error.URLError, OSError, ValueError) as err:
            print(f"notify: webhook {webhook} failed ({getattr(err, 'reason', err)}); status not sent")
    print(f"notify: {line}")
    return line


# What the components use: the task functions above and the task plumbing of tuna.kfp.task_io.
__all__ = ["TaskResult", "publish", "publish_markdown", "publish_metrics", "run_deploy", "run_encoder_step",
           "run_evaluate", "run_export", "run_index", "run_lm_step", "run_mine", "run_notify", "run_register",
           "run_train", "run_world", "start_run", "task", "validate_inputs"]
