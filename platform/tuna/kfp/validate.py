"""The pipeline's first task: every pipeline parameter and the recipe checked before anything runs, and the
overrides every later task loads the recipe with (the cluster's PVCs, Secrets and mounts written into it)."""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Sequence

from tuna.kfp.options import (
    DEPLOY_TARGETS,
    LAUNCHERS,
    SECRET_ENV,
    SERVING_SOURCES,
    TARGETS,
    PipelineError,
)
from tuna.kfp.task_io import _data_dir_override, _load
from tuna.recipe import MAX_GPUS_PER_NODE

_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def validate_inputs(config: str, overrides: Sequence[str], *, target: str = "local", data_root: str = "",
                    checkpoints_root: str = "", gpus: int = 0, data_pvc: str = "", checkpoints_pvc: str = "",
                    mlflow_secret: str = "", milvus_secret: str = "", s3_secret: str = "", launcher: str = "local",
                    deploy_target: str = "local", serving_source: str = "pvc",
                    serve_datastore: str = "", register_alias: str = "evaluated", gate_metric: str = "",
                    gate_min: float = 0.0) -> tuple[list[str], str]:
    """Check every pipeline parameter and the recipe before anything runs; return (resolved overrides, export root).

    ``launcher`` and ``gpus`` (the accelerators of a training task) are compiled into the pipeline from the recipe's
    ``cluster:`` section; the rest are run parameters. The nodes of a TrainJob / PyTorchJob are the recipe's
    ``cluster.num_nodes`` (the local launcher trains in the task's pod and ignores it).
    The resolved overrides carry the cluster's settings into the recipe (data dir on the data PVC, PVC and
    Secret names, nodes, GPUs, serving datastore) so every later task - and the TrainJobs it creates - reads the
    same config. Any problem raises PipelineError / ConfigError naming the parameter or key.
    """
    def bad(name: str, message: str) -> PipelineError:
        return PipelineError(f"pipeline parameter {name}: {message}")

    if target not in TARGETS:
        raise bad("target", f"{target!r} is not one of {', '.join(TARGETS)}")
    cluster = target == "kubernetes"
    if launcher not in LAUNCHERS:
        raise PipelineError(f"cluster.launcher: {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if launcher != "local" and not cluster:
        raise PipelineError(f"cluster.launcher: {launcher!r} creates jobs on Kubernetes; with target=local compile "
                            f"the pipeline with cluster.launcher=local")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 0 <= gpus <= MAX_GPUS_PER_NODE:
        raise PipelineError(f"gpus: {gpus!r} is out of range 0..{MAX_GPUS_PER_NODE} (compiled from cluster.gpus_per_node)")
    if deploy_target not in DEPLOY_TARGETS:
        raise bad("deploy_target", f"{deploy_target!r} is not one of {', '.join(DEPLOY_TARGETS)}")
    if deploy_target == "helm" and not cluster:
        raise bad("deploy_target", "helm installs into a Kubernetes cluster; with target=local use deploy_target=local")
    if deploy_target == "local" and cluster:
        raise bad("deploy_target", "local starts tritonserver inside the task pod and stops it; on Kubernetes use helm "
                                   "(or none)")
    if serving_source not in SERVING_SOURCES:
        raise bad("serving_source", f"{serving_source!r} is not one of {', '.join(SERVING_SOURCES)}")
    if not _ALIAS.match(register_alias) or register_alias == "latest" or re.fullmatch(r"v\d+", register_alias):
        raise bad("register_alias", f"{register_alias!r} must be letters, digits, '_' or '-' (not 'latest' or v<N>)")
    if not isinstance(gate_min, (int, float)) or isinstance(gate_min, bool) or not math.isfinite(gate_min):
        raise bad("gate_min", f"{gate_min!r} must be a finite number")
    if gate_metric and not re.fullmatch(r"[A-Za-z0-9_.@\-]+", gate_metric):
        raise bad("gate_metric", f"{gate_metric!r} is not a metric name such as tuna_pope_id_f1")
    if cluster:
        names = {"data_pvc": data_pvc, "checkpoints_pvc": checkpoints_pvc, "mlflow_secret": mlflow_secret,
                 "milvus_secret": milvus_secret, "s3_secret": s3_secret}
        for name, value in names.items():
            if not value:
                what = (f"the Secret holding {', '.join(SECRET_ENV[name])}" if name in SECRET_ENV
                        else "the PersistentVolumeClaim mounted in every pod")
                raise bad(name, f"is empty; name {what} (the pods mount it)")
        if not data_root.startswith("/") or not checkpoints_root.startswith("/"):
            raise bad("data_root", "the cluster build needs absolute data and checkpoints mount paths")
    written = _load(config, overrides)  # the recipe as written: one line naming a bad key
    if serve_datastore and serve_datastore not in written.datastores:
        raise bad("serve_datastore", f"unknown datastore {serve_datastore!r}; the recipe declares "
                                     f"{', '.join(written.datastores)}")
    resolved = list(overrides)
    export_root = ""
    if cluster:
        data_dir = written.run.data_dir
        if data_dir.startswith("/") and not (posixpath.normpath(data_dir) + "/").startswith(posixpath.normpath(data_root) + "/"):
            raise PipelineError(f"run.data_dir: {data_dir!r} is outside {data_root!r} where the data PVC "
                                  f"{data_pvc!r} is mounted, so the outputs would vanish with the pods; use a relative "
                                  f"run.data_dir or one under {data_root}")
        resolved += _data_dir_override(written, data_root)
        resolved += [f"cluster.data_pvc={data_pvc}", f"cluster.data_mount={data_root}",
                     f"cluster.checkpoints_pvc={checkpoints_pvc}", f"cluster.checkpoints_mount={checkpoints_root}",
                     f"cluster.mlflow_secret={mlflow_secret}", f"cluster.milvus_secret={milvus_secret}",
                     f"cluster.s3_secret={s3_secret}"]
        export_root = checkpoints_root
    if gpus:
        resolved += [f"cluster.gpus_per_node={gpus}", f"train.ranks={gpus}"]
    if serve_datastore:
        resolved.append(f"serve.datastore={serve_datastore}")
    cfg = _load(config, resolved)  # the resolved recipe must load too (e.g. a Secret name that is no DNS name)
    if cluster and deploy_target == "helm" and serving_source == "mlflow":
        tracking = cfg.cluster.mlflow_tracking_uri or cfg.track.tracking_uri
        if not tracking or not tracking.startswith(("http://", "https://")):
            raise bad("serving_source", "mlflow needs an MLflow server the serving pods can reach; set "
                                        "track.tracking_uri=http://mlflow.<namespace>.svc:5000 (or use pvc)")
    if cluster and deploy_target == "helm" and not cfg.index.uri:
        raise bad("deploy_target", "helm serving needs a Milvus server: set index.uri=http://<milvus>:19530 in the "
                                   "recipe or overrides (Milvus Lite folders stay in the pipeline's pods)")
    if launcher != "local":  # a Kueue queue or ServiceAccount manifests/ lacks would leave the job's pods waiting
        from tuna.train.jobs import check_manifest_names

        check_manifest_names(cfg)
    from tuna.datacheck import preflight
    from tuna.sources import sources

    preflight(sources(cfg).all())   # the data a user declared, read by its loaders before any task spends time
    from tuna.train.launch import check_checkpoints

    check_checkpoints(cfg)   # model.llava + model.vision_tower: their configs fit (read on the data PVC, no weights)
    return resolved, export_root


def inputs_digest(config: str, resolved: Sequence[str]) -> str:
    """What the cached data tasks' outputs depend on besides their upstream artifacts: the resolved recipe's content
    (not its path: an edited recipe file must miss the cache) and a listing digest (names, sizes, times) of every
    data source the recipe declares outside the bundled world (the world is made from the recipe)."""
    import hashlib
    import json

    from tuna.sources import listing_digest, sources

    cfg = _load(config, resolved)
    parts = [json.dumps(cfg.to_dict(), sort_keys=True, default=str)]
    parts += [f"{s.name}={listing_digest(s.path)}" for s in sources(cfg).all() if not s.from_world]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
