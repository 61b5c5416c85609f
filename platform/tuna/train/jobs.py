"""Training jobs as Kubernetes objects: one stage as a Kubeflow Trainer ``TrainJob`` (DeepSpeed runtime) or a
``PyTorchJob``, rendered from the recipe's ``cluster:`` section and validated offline against the CRDs in ``crds/``.

``render_trainjob`` / ``render_pytorchjob`` / ``render_runtime`` build the custom objects; ``validate`` checks one
against its CRD schema (plus the few admission rules the upstream webhooks add). :mod:`tuna.train.cluster`
submits and follows them. Nothing of the local path is replaced: every pod runs ``python -m tuna.train.worker
--config R --stage N ...``, the module the local ``deepspeed`` launcher runs, and ``deepspeed.init_distributed()``
finds the ranks:

* TrainJob on the MPI-based DeepSpeed runtime (``crds/runtimes/tuna-deepspeed-distributed.yaml``): the launcher
  pod (itself node 0) runs ``mpirun --hostfile /etc/mpi/hostfile -np N*G ... python -m tuna.train.worker``; the
  other pods run sshd; each rank discovers RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR from MPI (mpi4py).
  mpirun starts remote ranks over SSH, which does not carry the pod's environment, so the variables the worker
  needs are forwarded with ``-x`` (those listed in TUNA_FORWARD_ENV and set in the launcher).
* PyTorchJob (training-operator v1; deprecated: the operator is being shut down upstream): a Master and N-1
  Workers each run ``torchrun --nnodes N --nproc-per-node G -m tuna.train.worker``; the operator sets PET_NODE_RANK /
  PET_MASTER_ADDR / PET_MASTER_PORT, which torchrun reads.

With ``cluster.kueue_queue`` the job carries Kueue's queue label and is created suspended (Kueue unsuspends it on
admission). The queue and ``cluster.service_account`` must be objects ``manifests/`` creates: checked before rendering.
"""

from __future__ import annotations

import copy
import functools
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tuna.errors import ConfigError, TunaError
from tuna.recipe import Recipe, apply_override
from tuna.track import PARENT_RUN_ENV
from tuna.train.progress import PROGRESS_ENV

CRD_DIR = Path(__file__).resolve().parent / "crds"
RUNTIME_FILE = CRD_DIR / "runtimes" / "tuna-deepspeed-distributed.yaml"
WORKER_MODULE = "tuna.train.worker"
MPI_HOSTFILE = "/etc/mpi/hostfile"  # written by the Trainer MPI plugin (constants.MPIHostfileDir/MPIHostfileName)
PATCH_MANAGER = "tuna-platform/cli"  # owner of our runtimePatches entry
PYTORCH_PORT = 23456  # training-operator's default master port (port name pytorchjob-port)
# Env names the Trainer MPI plugin owns; a TrainJob setting them is refused by its webhook.
MPI_RESERVED_ENV = {"OMPI_MCA_orte_default_hostfile", "OMPI_MCA_plm_rsh_args", "OMPI_MCA_orte_keep_fqdn_hostnames",
                    "OMPI_MCA_orte_set_default_slots"}
# Keys each Secret must hold (required) or may hold (optional); they become env vars of every rank.
SECRET_KEYS = {
    "mlflow_secret": (("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), ()),
    "s3_secret": (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                  ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")),
    "milvus_secret": ((), ()),  # the key is index.token_env (MILVUS_TOKEN)
}
# mpirun forwards only the variables named with -x; this wrapper names those that are set ("$@" = mpirun args).
# Objects manifests/ creates that a recipe may name (tests/kube/test_manifests.py checks them against the rendered
# manifests): the ServiceAccounts of manifests/base/rbac.yaml and the LocalQueue of manifests/components/kueue.
MANIFEST_SERVICE_ACCOUNTS = ("tuna-pipeline", "tuna-trainer", "tuna-serving", "tuna-mlflow", "tuna-postgres")
MANIFEST_QUEUES = ("tuna",)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue's queue selection label, in the job's metadata.labels
MPIRUN_WRAPPER = ('args=(); for v in $TUNA_FORWARD_ENV; do [ -n "${!v+x}" ] && args+=(-x "$v"); done; '
                  'exec mpirun "${args[@]}" "$@"')


class ClusterError(TunaError):
    """A job cannot be submitted or followed (no kubeconfig, unreachable API server, refused by the server)."""


class ManifestInvalid(ClusterError, ValueError):
    """A rendered object does not satisfy its CRD schema; the message names the field path."""


class FollowTimeout(ClusterError):
    """The job had not finished when following it timed out (it keeps running on the cluster)."""


@dataclass(frozen=True)
class Kind:
    """A custom resource kind: where its CRD lives and how the API addresses it."""

    kind: str
    group: str
    version: str
    plural: str
    crd_file: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


TRAINJOB = Kind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "trainer.kubeflow.org_trainjobs.yaml")
PYTORCHJOB = Kind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "kubeflow.org_pytorchjobs.yaml")
CLUSTER_RUNTIME = Kind("ClusterTrainingRuntime", "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes",
                       "trainer.kubeflow.org_clustertrainingruntimes.yaml", namespaced=False)
LOCAL_QUEUE = Kind("LocalQueue", "kueue.x-k8s.io", "v1beta2", "localqueues", "kueue.x-k8s.io_localqueues.yaml")
KINDS = {k.kind: k for k in (TRAINJOB, PYTORCHJOB, CLUSTER_RUNTIME, LOCAL_QUEUE)}
INSTALL_HINTS = {
    "TrainJob": "install Kubeflow Trainer v2.3.0: kubectl apply --server-side -k "
                "'https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0'",
    "ClusterTrainingRuntime": "install Kubeflow Trainer v2.3.0 (see TrainJob)",
    "PyTorchJob": "install the training-operator v1.9 (deprecated; prefer --launcher trainjob): kubectl apply "
                  "--server-side -k 'https://github.com/kubeflow/trainer.git/manifests/overlays/standalone?ref=v1.9.4'",
    "LocalQueue": "install Kueue v0.19 with its TrainJob integration enabled (see manifests/README.md)",
}


# --------------------------------------------------------------------------------------------- render


def job_name(cfg: Recipe, stage: int, variant: str, when: datetime | None = None) -> str:
    """``tuna-<run>-s<stage>-<variant>-<ddHHMMSS>``: an RFC 1035 label short enough for JobSet pod hostnames."""
    run = re.sub(r"[^a-z0-9-]+", "-", cfg.run.name.lower()).strip("-")[:16].strip("-") or "run"
    var = re.sub(r"[^a-z0-9-]+", "-", variant.lower()).strip("-")[:10].strip("-") or "v"
    stamp = (when or datetime.now(UTC)).strftime("%d%H%M%S")
    return f"tuna-{run}-s{stage}-{var}-{stamp}"


def worker_args(cfg: Recipe, stage: int, variant: str = "tuna", overrides: Sequence[str] = (), *,
                recipe: str | Path | None = None, resume: bool = False) -> list[str]:
    """``-m tuna.train.worker --config <recipe in the image> --stage N --variant V [--resume] key=value ...``.

    The caller's overrides are passed on, then the cluster's (ranks per pod, precision, ZeRO stage, data dir on
    the PVC), which are resolved from ``cfg`` (loaded with the caller's overrides) and so come last.
    """
    _check_launch(cfg, stage, variant, overrides)
    c = cfg.cluster
    name = Path(recipe).name if recipe is not None else f"{cfg.run.name}.yaml"
    args = ["-m", WORKER_MODULE, "--config", posixpath.join(c.workdir, "configs", name),
            "--stage", str(stage), "--variant", variant]
    if resume:
        args.append("--resume")
    return args + list(overrides) + _cluster_overrides(cfg, stage)


def render_trainjob(cfg: Recipe, stage: int, variant: str = "tuna", overrides: Sequence[str] = (), *,
                    recipe: str | Path | None = None, resume: bool = False, name: str | None = None,
                    parent_run_id: str | None = None) -> dict[str, Any]:
    """A Kubeflow Trainer ``TrainJob`` running ``stage`` on the DeepSpeed (MPI) runtime ``cluster.runtime``; with
    ``parent_run_id`` (the pipeline's MLflow run) the stage's run nests under it."""
    c = cfg.cluster
    args = worker_args(cfg, stage, variant, overrides, recipe=recipe, resume=resume)
    nproc = procs_per_node(cfg)
    env = _env(cfg, parent_run_id) + _secret_env(cfg)
    # + the Trainer's progress endpoint (TrainJobStatus gate): set in the launcher pod only, forwarded when set
    forward = ["PATH"] + [e["name"] for e in env] + list(PROGRESS_ENV)
    env.append({"name": "TUNA_FORWARD_ENV", "value": " ".join(forward)})
    command = ["bash", "-c", MPIRUN_WRAPPER, "mpirun",
               "--hostfile", MPI_HOSTFILE, "-np", str(c.num_nodes * nproc), "--bind-to", "none", "--map-by", "slot",
               "python", *args]
    volumes, mounts = _volumes(cfg)
    pod_patch: dict[str, Any] = {**_pod_settings(cfg), "volumes": volumes,
                                 "containers": [{"name": "node", "volumeMounts": mounts}]}
    labels = _labels(cfg, stage, variant)
    replicated = [{"name": job, "template": {"spec": {"template": {"metadata": {"labels": dict(labels)},
                                                                   "spec": copy.deepcopy(pod_patch)}}}}
                  for job in ("launcher", "node")]
    obj = {
        "apiVersion": TRAINJOB.api_version,
        "kind": TRAINJOB.kind,
        "metadata": {"name": name or job_name(cfg, stage, variant), "namespace": c.namespace,
                     "labels": {**labels, **_queue_label(cfg)}},
        "spec": {
            "runtimeRef": {"name": c.runtime, "apiGroup": CLUSTER_RUNTIME.group, "kind": CLUSTER_RUNTIME.kind},
            "trainer": {
                "image": c.image,
                "command": command,
                "env": env,
                "numNodes": c.num_nodes,
                "numProcPerNode": nproc,
                "resourcesPerNode": _resources(cfg),
            },
            "runtimePatches": [{"manager": PATCH_MANAGER,
                                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": replicated}}}}],
        },
    }
    if c.kueue_queue:  # created suspended, as Kueue's TrainJob guide shows; Kueue unsuspends it when admitted
        obj["spec"]["suspend"] = True
    return obj


def render_pytorchjob(cfg: Recipe, stage: int, variant: str = "tuna", overrides: Sequence[str] = (), *,
                      recipe: str | Path | None = None, resume: bool = False, name: str | None = None,
                      parent_run_id: str | None = None) -> dict[str, Any]:
    """A training-operator ``PyTorchJob`` (kubeflow.org/v1): torchrun on a Master and ``num_nodes - 1`` Workers; with
    ``parent_run_id`` the stage's MLflow run nests under that run."""
    c = cfg.cluster
    args = worker_args(cfg, stage, variant, overrides, recipe=recipe, resume=resume)
    nproc = procs_per_node(cfg)
    volumes, mounts = _volumes(cfg)
    env_from = [{"secretRef": {"name": getattr(c, key)}} for key in SECRET_KEYS if getattr(c, key)]
    container: dict[str, Any] = {
        "name": "pytorch",  # the operator and its webhook look for this container name
        "image": c.image,
        "workingDir": c.workdir,
        "command": ["torchrun", "--nnodes", str(c.num_nodes), "--nproc-per-node", str(nproc), *args],
        "env": _env(cfg, parent_run_id),
        "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCH_PORT}],
        "resources": _resources(cfg),
        "volumeMounts": mounts,
    }
    if env_from:
        container["envFrom"] = env_from
    labels = _labels(cfg, stage, variant)
    template = {"metadata": {"labels": dict(labels)},
                "spec": {**_pod_settings(cfg), "containers": [container], "volumes": volumes}}
    # restartPolicy Never: a restarted rank cannot rejoin a static rendezvous; rerun the stage with --resume instead.
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if c.num_nodes > 1:
        replicas["Worker"] = {"replicas": c.num_nodes - 1, "restartPolicy": "Never", "template": copy.deepcopy(template)}
    run_policy: dict[str, Any] = {"cleanPodPolicy": "None"}
    if c.kueue_queue:
        run_policy["suspend"] = True  # Kueue's kubeflow.org/pytorchjob integration unsuspends it when admitted
    return {
        "apiVersion": PYTORCHJOB.api_version,
        "kind": PYTORCHJOB.kind,
        "metadata": {"name": name or job_name(cfg, stage, variant), "namespace": c.namespace,
                     "labels": {**labels, **_queue_label(cfg)}},
        "spec": {"nprocPerNode": str(nproc), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
    }


def render_runtime(cfg: Recipe) -> dict[str, Any]:
    """The ClusterTrainingRuntime the TrainJob references, named ``cluster.runtime``, with ``cluster.image`` on every pod."""
    obj = yaml.safe_load(RUNTIME_FILE.read_text(encoding="utf-8"))
    obj["metadata"]["name"] = cfg.cluster.runtime
    for job in obj["spec"]["template"]["spec"]["replicatedJobs"]:
        for container in job["template"]["spec"]["template"]["spec"]["containers"]:
            container["image"] = cfg.cluster.image
    return obj


def to_yaml(obj: dict[str, Any]) -> str:
    """The object as YAML, for ``--dry-run`` and ``kubectl apply -f -``."""
    return yaml.dump(obj, Dumper=_NoAliases, sort_keys=False, width=120)


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def procs_per_node(cfg: Recipe) -> int:
    """Ranks per pod: one per GPU; on CPU pods, ``train.ranks``."""
    return cfg.cluster.gpus_per_node or cfg.train.ranks


def _check_launch(cfg: Recipe, stage: int, variant: str, overrides: Sequence[str]) -> None:
    if stage not in (1, 2):
        raise ConfigError(f"stage: must be 1 or 2, got {stage!r}")
    # torch is imported there: only when rendering, not when this module is imported
    from tuna.variants import VARIANTS

    if variant not in VARIANTS:
        raise ConfigError(f"variant: must be one of {', '.join(VARIANTS)}; got {variant!r}")
    for override in overrides:
        apply_override({}, override)  # syntax only (key=value); the caller loaded cfg with them
    precision = cfg.cluster.precision or cfg.train.precision
    if precision == "fp16" and cfg.cluster.gpus_per_node == 0:
        raise ConfigError("train.precision: fp16 needs GPUs (DeepSpeed refuses it on CPU); "
                          "set cluster.precision to fp32 or bf16, or cluster.gpus_per_node")
    check_manifest_names(cfg)


def check_manifest_names(cfg: Recipe) -> None:
    """Refuse a ``cluster.kueue_queue`` or ``cluster.service_account`` that ``manifests/`` does not create, in one
    line naming the key and the fix, before anything is submitted (a pod would otherwise wait for it forever)."""
    c = cfg.cluster
    if c.kueue_queue and c.kueue_queue not in MANIFEST_QUEUES:
        raise ConfigError(f"cluster.kueue_queue: {c.kueue_queue!r} is not a LocalQueue manifests/ creates (known: "
                          f"{', '.join(MANIFEST_QUEUES)}, in manifests/components/kueue); set it to one of those or null, "
                          f"or add that LocalQueue to manifests/components/kueue/ and to tuna.train.jobs.MANIFEST_QUEUES")
    if c.service_account and c.service_account not in MANIFEST_SERVICE_ACCOUNTS:
        raise ConfigError(f"cluster.service_account: {c.service_account!r} is not a ServiceAccount manifests/base/rbac.yaml "
                          f"creates (known: {', '.join(MANIFEST_SERVICE_ACCOUNTS)}); set it to tuna-trainer or null, or add "
                          f"it to manifests/base/rbac.yaml and to tuna.train.jobs.MANIFEST_SERVICE_ACCOUNTS")


def _cluster_overrides(cfg: Recipe, stage: int) -> list[str]:
    c = cfg.cluster
    zero = c.zero_stage or cfg.train.stage(stage).zero_stage
    out = [f"train.ranks={procs_per_node(cfg)}", f"train.precision={c.precision or cfg.train.precision}",
           f"train.stage{stage}.zero_stage={zero}"]
    data_dir = cfg.run.data_dir
    if not data_dir.startswith("/"):  # relative to where the run starts: on the cluster, the data PVC
        out.append(f"run.data_dir={posixpath.join(c.data_mount, data_dir)}")
    elif c.data_pvc and not (posixpath.normpath(data_dir) + "/").startswith(posixpath.normpath(c.data_mount) + "/"):
        raise ConfigError(f"run.data_dir: {data_dir!r} is outside cluster.data_mount {c.data_mount!r} where "
                          f"cluster.data_pvc {c.data_pvc!r} is mounted, so the outputs would vanish with the pods; "
                          f"set run.data_dir under {c.data_mount} or change cluster.data_mount")
    return out


def _labels(cfg: Recipe, stage: int, variant: str) -> dict[str, str]:
    run = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.run.name)[:63].strip("-_.") or "run"
    return {"app.kubernetes.io/part-of": "tuna", "app.kubernetes.io/component": "train",
            "tuna-platform/run": run, "tuna-platform/stage": str(stage), "tuna-platform/variant": variant}


def _queue_label(cfg: Recipe) -> dict[str, str]:
    return {KUEUE_QUEUE_LABEL: cfg.cluster.kueue_queue} if cfg.cluster.kueue_queue else {}


def _env(cfg: Recipe, parent_run_id: str | None = None) -> list[dict[str, Any]]:
    c = cfg.cluster
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "OMP_NUM_THREADS", "value": str(cfg.train.threads_per_rank)},
           {"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    if c.data_pvc:  # hub checkpoints (model.vision_tower / language_model ids) are cached once on the PVC
        env.append({"name": "HF_HOME", "value": posixpath.join(c.data_mount, ".cache", "huggingface")})
    uri = c.mlflow_tracking_uri or cfg.track.tracking_uri
    if uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": uri})
    if parent_run_id:  # the ranks run in other pods: the caller's exported parent run id does not reach them by itself
        env.append({"name": PARENT_RUN_ENV, "value": parent_run_id})
    return env


def _secret_env(cfg: Recipe) -> list[dict[str, Any]]:
    """Secret keys as env vars (a TrainJob has no envFrom): required keys fail the pod early when missing."""
    env = []
    for field_name, (required, optional) in SECRET_KEYS.items():
        secret = getattr(cfg.cluster, field_name)
        if not secret:
            continue
        required = (cfg.index.token_env,) if field_name == "milvus_secret" else required
        for key, opt in [(k, False) for k in required] + [(k, True) for k in optional]:
            ref: dict[str, Any] = {"name": secret, "key": key}
            if opt:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _resources(cfg: Recipe) -> dict[str, dict[str, str]]:
    c = cfg.cluster
    amounts = {"cpu": c.cpu, "memory": c.memory}
    if c.gpus_per_node:
        amounts["nvidia.com/gpu"] = str(c.gpus_per_node)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volumes(cfg: Recipe) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    c = cfg.cluster
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": c.shm_size}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    for vol, claim, path in (("data", c.data_pvc, c.data_mount), ("checkpoints", c.checkpoints_pvc, c.checkpoints_mount)):
        if claim:
            volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim}})
            mounts.append({"name": vol, "mountPath": path})
    return volumes, mounts


def _pod_settings(cfg: Recipe) -> dict[str, Any]:
    c = cfg.cluster
    out: dict[str, Any] = {}
    if c.service_account:
        out["serviceAccountName"] = c.service_account
    if c.node_selector:
        out["nodeSelector"] = dict(c.node_selector)
    if c.tolerations:
        out["tolerations"] = [{k: v for k, v in vars(t).items() if v is not None} for t in c.tolerations]
    return out


# ------------------------------------------------------------------------------------------- validate


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of ``kind`` from the CRD kept in crds/, made strict about unknown fields."""
    spec = KINDS[kind]
    docs = [d for d in yaml.load_all((CRD_DIR / spec.crd_file).read_text(encoding="utf-8"), Loader=_Loader) if d]
    crd = next(d for d in docs if d.get("kind") == "CustomResourceDefinition" and d["spec"]["names"]["kind"] == kind)
    assert crd["spec"]["group"] == spec.group, f"{spec.crd_file} is not group {spec.group}"  # a repo bug
    version = next(v for v in crd["spec"]["versions"] if v["name"] == spec.version)
    return _strict(version["schema"]["openAPIV3Schema"])


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~0.03 s per CRD instead of ~3 s


def _strict(schema: Any) -> Any:
    """Refuse unknown fields where the API server's strict field validation (kubectl's default) would."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (_strict(v) if k in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not") else v)
           for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def validate(obj: dict[str, Any]) -> None:
    """Check ``obj`` against its CRD schema (types, required fields, enums, limits, unknown fields, the CEL
    rules of simple forms) and the admission rules of the upstream webhooks; raise ManifestInvalid naming the path."""
    import jsonschema

    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind not in KINDS:
        raise ManifestInvalid(f"kind: must be one of {', '.join(KINDS)}; got {kind!r}")
    spec = KINDS[kind]
    name = obj["metadata"].get("name") if isinstance(obj.get("metadata"), dict) else None
    where = f"{kind} {name or '<unnamed>'}"
    if obj.get("apiVersion") != spec.api_version:
        raise ManifestInvalid(f"{where}: apiVersion: must be {spec.api_version}, got {obj.get('apiVersion')!r}")
    if not name:
        raise ManifestInvalid(f"{where}: metadata.name: required")
    validator = jsonschema.Draft7Validator(crd_schema(kind))
    errors = sorted(validator.iter_errors(obj), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        message = first.message
        if first.validator == "pattern" and "[KMGTPE]i" in str(first.validator_value):
            message = f"{first.instance!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)"
        raise ManifestInvalid(f"{where}: {_path(first.absolute_path)}: {one_line(message)}{more} "
                              f"[schema: crds/{spec.crd_file}]")
    for path, message in [*_cel_errors(crd_schema(kind), obj, []), *_webhook_errors(obj)]:
        raise ManifestInvalid(f"{where}: {_path(path) + ': ' if path else ''}{message}")


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


# CEL rules (x-kubernetes-validations) of the forms the kept CRDs use on create; other forms are left to the server.
_CEL_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], Any], bool]]] = [
    (re.compile(r"^self == oldSelf$"), lambda m, v: True),  # transition rule: no old object on create
    (re.compile(r"^self((?:\.\w+)*)\.matches\('([^']*)'\)$"),
     lambda m, v: re.search(m[2], str(_dig(v, m[1]))) is not None),
    (re.compile(r"^size\(self((?:\.\w+)*)\) (<=|>=|==|<|>) (\d+)$"),
     lambda m, v: _compare(len(_dig(v, m[1]) or ""), m[2], int(m[3]))),
    (re.compile(r"^self == '' \|\| self\.matches\('([^']*)'\)$"), lambda m, v: v == "" or re.search(m[1], v) is not None),
    (re.compile(r"^self in \[([^\]]*)\]$"), lambda m, v: v in [s.strip().strip("'") for s in m[1].split(",")]),
    (re.compile(r"^has\(self\.(\w+)\)$"), lambda m, v: m[1] in v),
    (re.compile(r"^self (<=|>=|==|<|>) (-?\d+)$"), lambda m, v: _compare(v, m[1], int(m[2]))),
]


def _dig(value: Any, dotted: str) -> Any:
    for part in filter(None, dotted.split(".")):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _compare(a: Any, op: str, b: int) -> bool:
    return {"<=": a <= b, ">=": a >= b, "==": a == b, "<": a < b, ">": a > b}[op]


def _cel_errors(schema: dict[str, Any], value: Any, path: list[Any]) -> Iterator[tuple[list[Any], str]]:
    for rule in schema.get("x-kubernetes-validations", ()):
        for pattern, check in _CEL_RULES:
            m = pattern.match(rule["rule"].strip())
            if m and not check(m, value):
                yield path, rule.get("message") or f"fails {rule['rule']}"
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub:
                yield from _cel_errors(sub, item, path + [key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _cel_errors(schema["items"], item, path + [i])


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _webhook_errors(obj: dict[str, Any]) -> Iterator[tuple[list[Any], str]]:
    """Admission rules of the upstream webhooks (trainer v2.3.0 MPI plugin, training-operator v1.9 PyTorchJob)."""
    name, kind = obj["metadata"]["name"], obj["kind"]
    if kind in ("TrainJob", "PyTorchJob") and not (_DNS1035.match(name) and len(name) <= 63):
        yield ["metadata", "name"], f"must be an RFC 1035 label (a-z, 0-9, '-', starting with a letter, <= 63), got {name!r}"
    if kind == "TrainJob":
        for i, env in enumerate(((obj.get("spec") or {}).get("trainer") or {}).get("env") or []):
            if env.get("name") in MPI_RESERVED_ENV:
                yield ["spec", "trainer", "env", i, "name"], f"{env['name']} is reserved by the MPI runtime"
    if kind == "PyTorchJob":
        for role, rs in obj["spec"]["pytorchReplicaSpecs"].items():
            at = ["spec", "pytorchReplicaSpecs", role]
            if role not in ("Master", "Worker"):
                yield at, "replica type must be Master or Worker"
            containers = rs.get("template", {}).get("spec", {}).get("containers") or []
            if not any(c.get("name") == "pytorch" for c in containers):
                yield at + ["template", "spec", "containers"], "must have a container named pytorch"
            for i, c in enumerate(containers):
                if not c.get("image"):
                    yield at + ["template", "spec", "containers", i, "image"], "required"
            if role == "Master" and rs.get("replicas") != 1:
                yield at + ["replicas"], f"must be 1, got {rs.get('replicas')!r}"
            if role == "Worker" and rs.get("replicas", 1) < 1:
                yield at + ["replicas"], f"must be at least 1, got {rs.get('replicas')!r}"


