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
    _provenance,
    _read_json,
    _stage,
    _uri,
    publish,
    publish_markdown,
    publish_metrics,
    task,
)
from tuna.kfp.validate import inputs_digest, validate_inputs
from tuna.layout import Layout, layout
from tuna.recipe import Recipe
from tuna.steps import STEPS, Options, Outcome, datastore_meta, execute, stage_meta


def start_run(config: str, overrides: Sequence[str], data: Mapping[str, Mapping[str, Any]]) -> str:
    """Open this pipeline run's MLflow parent run (params = the recipe; metrics and tags = the data steps'
    artifacts metadata) and return its id; training, eval, export, register and deploy nest under it."""
    from tuna import track
    from tuna.retrieval.datastore import read_manifest

    cfg = _load(config, overrides)
    data = dict(data)
    for name in cfg.datastores:   # the datastores not passed as artifacts (the task ran after their index tasks)
        m = read_manifest(cfg, name)
        if f"index_{name}" not in data and m is not None:
            data[f"index_{name}"] = _located(cfg, {"name": name, **datastore_meta(cfg, name, m)})
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


# --------------------------------------------------------------------------------------------- steps


def _located(cfg: Recipe, value: Any) -> Any:
    """Paths in an outcome's metadata become artifact URIs (``pvc://<claim>/...`` on the data PVC)."""
    if isinstance(value, Path):
        return _uri(cfg, value)
    if isinstance(value, dict):
        return {k: _located(cfg, v) for k, v in value.items()}
    return value


def _result(cfg: Recipe, label: str, out: Outcome, summary: str | None = None, **extra: Any) -> TaskResult:
    meta = {**_provenance(cfg, label, out.status), **_located(cfg, {**out.meta, **extra})}
    return TaskResult(out.manifest, meta, summary or f"{label} {out.status}: {out.summary}", out.metrics)


def _quiet() -> Options:
    return Options(progress=False, log=print)


def run_world(config: str, overrides: Sequence[str]) -> TaskResult:
    """`tuna world`: generate the bundled world (skipped when up to date)."""
    cfg = _load(config, overrides)
    return _result(cfg, "world", execute("world", cfg, _quiet()))


def run_encoder_step(config: str, overrides: Sequence[str]) -> TaskResult:
    """`tuna encoder`: train the tiny CLIP (or load model.vision_tower); zero-shot accuracy per split."""
    cfg = _load(config, overrides)
    return _result(cfg, "encoder", execute("encoder", cfg, _quiet()))


def run_mine(config: str, overrides: Sequence[str], domain: str = "all") -> TaskResult:
    """`tuna mine`: mine tags from the web captions of one corpus or all the declared datastores need (each
    skipped when up to date)."""
    cfg = _load(config, overrides)
    out = execute("mine", cfg, replace(_quiet(), domains=() if domain == "all" else (domain,)))
    return _result(cfg, "mine", out, "; ".join(f"{d}: {m['count']} captions" for d, m in out.manifest.items()))


def run_index(config: str, overrides: Sequence[str], datastore: str = "all") -> TaskResult:
    """`tuna index`: build one declared datastore or all (each skipped when up to date)."""
    cfg = _load(config, overrides)
    out = execute("index", cfg, replace(_quiet(), datastores=() if datastore == "all" else (datastore,)))
    result = _result(cfg, "index", out, "; ".join(f"{n}: {p['rows']} rows" for n, p in out.meta["datastores"].items()))
    if datastore != "all":
        result.metadata.update({"name": datastore, **result.metadata["datastores"][datastore]})
        result.manifest = out.manifest[datastore]
    return result


def run_lm_step(config: str, overrides: Sequence[str]) -> TaskResult:
    """`tuna lm`: train the tokenizer and tiny Llama (or load model.language_model)."""
    cfg = _load(config, overrides)
    return _result(cfg, "lm", execute("lm", cfg, _quiet()))


# --------------------------------------------------------------------------------------------- training


@contextlib.contextmanager
def _nested_under(cfg: Recipe, parent: str) -> Iterator[None]:
    """Export the parent run id and tracking URI so the DeepSpeed ranks' runs nest under the pipeline run (under
    KFP's MLflow plugin: under the plugin's run for this task)."""
    from tuna import track

    values = {track.TRACKING_URI_ENV: track.tracking_uri(cfg)}
    parent = track.injected_run_id() or parent
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
    opts = replace(_quiet(), variants=(variant,), stages=(stage,))  # an unknown variant fails here, before any rank
    with _nested_under(cfg, parent):
        if launcher == "local":
            out = execute("train", cfg, opts)
            status = out.status
        elif STEPS["train"].up_to_date(cfg, opts):
            status = "up to date"
        else:
            from tuna.train import cluster

            status = "trained"
            state = cluster.launch(cfg, stage, variant, [str(o) for o in overrides], launcher=launcher, recipe=config)
            if state != "Succeeded":
                raise PipelineError(f"stage {stage} of {variant!r} ended {state} on the cluster; see `kubectl "
                                    f"describe` of the job named above, then rerun the pipeline")
    m = _read_json(layout(cfg).stage(variant, stage) / "metrics.json")
    meta = {**_provenance(cfg, f"train-{variant}-stage{stage}", status), **_located(cfg, stage_meta(cfg, variant, stage)),
            "launcher": launcher}
    return TaskResult(m, meta, f"{variant} stage {stage} {status}: loss {m.get('first_loss')} -> {m.get('final_loss')}")


# --------------------------------------------------------------------------------------------- evaluation


def run_evaluate(config: str, overrides: Sequence[str], parent: str, variants: Sequence[str]) -> tuple[TaskResult, str]:
    """`tuna eval`: every variant (skipped when up to date), the table and the report (logged to an `eval` run).

    Returns the result (metrics = the headline numbers per variant, ``<variant>_<metric>``) and report.md's text.
    """
    from tuna.variants import VARIANTS as KNOWN

    names = tuple(dict.fromkeys(str(v) for v in variants if v))
    if not names or any(v not in KNOWN for v in names):
        raise PipelineError(f"variants: {list(variants)!r} must name trained variants among {', '.join(KNOWN)}")
    cfg = _load(config, overrides)
    opts = replace(_quiet(), variants=names, report_command=f"tuna pipeline (task evaluate) --config {config}")
    with _stage(cfg, parent, "eval") as run:
        out = execute("eval", cfg, opts, run=run)
        mlflow_run = run.run_id
    result = _result(cfg, "eval", out, f"{len(out.manifest['headline'])} variants -> {out.meta['report']}",
                     mlflow_run_id=mlflow_run)
    return result, Path(out.meta["report"]).read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- export, register, deploy


def run_export(config: str, overrides: Sequence[str], parent: str, variant: str, out_root: str = "",
               trtllm: bool = False) -> TaskResult:
    """`tuna export`: the variant's Triton model repository, in the run's serve/<variant> under ``out_root`` when
    set (the checkpoints PVC on a cluster), else under the run's own folder."""
    cfg = _load(config, overrides)
    target = Layout(Path(out_root) / cfg.run.name).export(variant) if out_root else None
    opts = replace(_quiet(), export_variant=variant, export_to=target, trtllm=trtllm)
    if STEPS["export"].up_to_date(cfg, opts):
        out = execute("export", cfg, opts)
    else:
        with _stage(cfg, parent, f"export-{variant}") as run:
            t0 = time.perf_counter()
            out = execute("export", cfg, opts)
            run.log_metrics({"files": out.metrics["files"], "seconds": time.perf_counter() - t0})
            run.set_tags({"tuna.variant": variant, "tuna.model_digest": out.meta["model_digest"],
                          "tuna.repository": str(out.meta["path"])})
    return _result(cfg, "export", out, out.summary)


def run_register(config: str, overrides: Sequence[str], parent: str, repository: Mapping[str, Any],
                 metrics: Mapping[str, Any], alias: str = "evaluated", gate_metric: str = "",
                 gate_min: float = 0.0) -> str:
    """Register the exported Triton repository a cluster serves (:func:`served_repository`: the TensorRT-LLM one for
    a GPU recipe) as a new version of ``<registered model>-serving`` with ``alias``.

    The version's run holds the repository (``model_repository/``) and the evaluation's headline metrics. With
    ``gate_metric`` set, nothing is registered unless that metric is >= ``gate_min``; then "" is returned.
    Returns ``models:/<name>@<alias>`` (what the Helm chart's mlflow source and ``deploy`` read).
    """
    from tuna import track
    from tuna.variants import registered_name

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
    path = Path(served_repository(cfg, repository))
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


def served_repository(cfg: Recipe, repository: Mapping[str, Any]) -> str:
    """The exported repository a cluster serves: the TensorRT-LLM one (GPU serving image) for a GPU recipe
    (``cluster.gpus_per_node`` > 0), else the CPU one (python/vLLM LLM step)."""
    if cfg.cluster.gpus_per_node <= 0:
        return str(repository.get("path", ""))
    gpu = repository.get("trtllm_path")
    if not gpu:
        raise PipelineError(f"the recipe serves on GPUs (cluster.gpus_per_node={cfg.cluster.gpus_per_node}) but the export "
                            f"at {repository.get('path')!r} has no TensorRT-LLM repository; export with trtllm=true "
                            f"(`tuna export --trtllm`), or set cluster.gpus_per_node=0 to serve the CPU repository")
    return str(gpu)


def run_deploy(config: str, overrides: Sequence[str], parent: str, repository: Mapping[str, Any], target: str = "local",
               registered: str = "", serving_source: str = "pvc", chart: str = "helm/tuna-serving",
               release: str = "tuna-serving", namespace: str = "tuna", values_files: Sequence[str] = (),
               repository_pvc: str = "", repository_mount: str = "") -> str:
    """Serve the exported repository: ``local`` runs the tritonserver demo (start, one gRPC question, stop);
    ``helm`` runs ``helm upgrade --install`` with the served repository (:func:`served_repository`) on its PVC (or the
    registered MLflow version);
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
        uri = pvc_uri(served_repository(cfg, repository), repository_pvc, repository_mount)
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
        folder = layout(cfg).kfp
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "status.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        for stale in sorted(layout(cfg).serve_root.glob("*.tmp")):
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
__all__ = ["TaskResult", "publish", "publish_markdown", "publish_metrics", "run_deploy", "served_repository", "run_encoder_step",
           "run_evaluate", "run_export", "run_index", "run_lm_step", "run_mine", "run_notify", "run_register",
           "run_train", "run_world", "start_run", "task", "validate_inputs", "inputs_digest"]
