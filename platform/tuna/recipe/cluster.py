"""The recipe's ``cluster:`` section: the Kubernetes settings of cluster runs (images, PVCs, GPUs, tolerations)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from tuna.recipe.checks import require as _require
from tuna.recipe.sections import Precision

# Kubernetes names and quantities, as the API server checks them (RFC 1123 labels/subdomains, resource quantities).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
MAX_GPUS_PER_NODE = 16  # the largest GPU node types (e.g. 16 x A100 40GB) carry 16


@dataclass(frozen=True)
class TolerationConfig:
    """One toleration of the training pods (e.g. for the taint GPU node pools carry)."""

    key: str | None = None          # taint key; null with operator Exists tolerates every taint
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None        # taint value (operator Equal only)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None  # null = every effect

    def __post_init__(self) -> None:
        _require(self.operator == "Equal" or self.value is None, "value",
                 f"must be null with operator Exists (use operator Equal to match a value), got {self.value!r}")
        _require(self.operator == "Exists" or bool(self.key), "key", "must name the taint when operator is Equal")


@dataclass(frozen=True)
class ClusterConfig:
    """Training on Kubernetes (`tuna train --launcher trainjob|pytorchjob`, see tuna.train.cluster) and the Kubernetes
    settings the KFP pipeline is compiled with (`tuna pipeline compile|submit --config <recipe>`, see tuna.kfp)."""

    # How the KFP pipeline's training tasks train, fixed when it is compiled: local = DeepSpeed ranks inside the task
    # pod (which then gets gpus_per_node GPUs, node_selector, tolerations); trainjob | pytorchjob = the task submits
    # that job and follows it, holding no GPU (the job's pods get them). `tuna train --launcher` chooses for itself.
    # pytorchjob is deprecated (Kubeflow Training Operator v1 is being shut down upstream): use trainjob (Trainer v2.3).
    launcher: Literal["local", "trainjob", "pytorchjob"] = "local"
    namespace: str = "tuna"                          # namespace of the TrainJob / PyTorchJob
    image: str = "ghcr.io/tuna-platform/tuna:0.1.0"  # project image, pinned by tag or digest
    serving_image: str = "ghcr.io/tuna-platform/tuna-serving:0.1.0"  # the chart's Triton image (`tuna deploy`)
    workdir: str = "/opt/tuna"                       # the repository inside the image (recipes in <workdir>/configs)
    runtime: str = "tuna-deepspeed-distributed"      # Kubeflow Trainer ClusterTrainingRuntime the TrainJob uses
    kueue_queue: str | None = None                   # Kueue LocalQueue the job is queued in (label kueue.x-k8s.io/queue-name; null = none)
    num_nodes: int = 1                               # pods (nodes) in the job
    gpus_per_node: int = 0                           # nvidia.com/gpu per pod = ranks per pod; 0 = CPU pods
    cpu: str = "4"                                   # CPU per pod (Kubernetes quantity)
    memory: str = "16Gi"                             # memory per pod (Kubernetes quantity)
    shm_size: str = "2Gi"                            # /dev/shm per pod (NCCL and DataLoader workers use it)
    precision: Precision | None = None               # null = train.precision
    zero_stage: int | None = None                    # null = train.stage<N>.zero_stage of the launched stage
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[TolerationConfig, ...] = ()
    service_account: str | None = None               # pods' ServiceAccount (null = the namespace default)
    pipeline_service_account: str | None = None      # the KFP run's pods (`tuna pipeline submit`; manifests: tuna-pipeline)
    kfp_namespace: str | None = None                 # multi-user Kubeflow: the profile namespace runs go to (null = single-user)
    data_pvc: str | None = "tuna-data"               # PVC holding run.data_dir (null = pod-local, lost at exit)
    data_mount: str = "/mnt/tuna"                    # where data_pvc is mounted; a relative run.data_dir lands here
    checkpoints_pvc: str | None = None               # separate PVC for checkpoints (null = under run.data_dir)
    checkpoints_mount: str = "/mnt/tuna-checkpoints"  # where checkpoints_pvc is mounted
    mlflow_secret: str | None = None                 # Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD
    milvus_secret: str | None = None                 # Secret with the Milvus token (key: index.token_env)
    s3_secret: str | None = None                     # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    mlflow_tracking_uri: str | None = None           # null = track.tracking_uri
    kube_context: str | None = None                  # kubeconfig context (null = current; in a pod: in-cluster)
    poll_seconds: float = 15.0                       # status polling interval while following a job
    follow_timeout: float = 86400.0                  # stop following (the job keeps running) after this long

    def __post_init__(self) -> None:
        _require(bool(_DNS_LABEL.match(self.namespace)) and len(self.namespace) <= 63, "namespace",
                 f"must be a Kubernetes namespace name (lower-case letters, digits, '-'; <= 63), got {self.namespace!r}")
        for name in ("image", "serving_image"):
            ref = getattr(self, name)
            last = ref.rsplit("/", 1)[-1]
            _require(bool(ref.strip()) and not any(c.isspace() for c in ref) and (":" in last or "@sha256:" in ref), name,
                     f"must name a tag or digest (e.g. ghcr.io/tuna-platform/tuna:0.1.0) so every pod runs the same code, "
                     f"got {ref!r}")
        for name in ("workdir", "data_mount", "checkpoints_mount"):
            path = getattr(self, name)
            _require(path.startswith("/"), name, f"must be an absolute path in the pod, got {path!r}")
        _require(bool(_DNS_SUBDOMAIN.match(self.runtime)), "runtime",
                 f"must name a ClusterTrainingRuntime (lower-case DNS name), got {self.runtime!r}")
        _require(self.kueue_queue is None or (bool(_DNS_LABEL.match(self.kueue_queue)) and len(self.kueue_queue) <= 63),
                 "kueue_queue", f"must name a Kueue LocalQueue (lower-case letters, digits, '-'; <= 63) or be null, "
                                f"got {self.kueue_queue!r}")
        _require(1 <= self.num_nodes <= 1024, "num_nodes", f"must be in 1..1024, got {self.num_nodes}")
        _require(0 <= self.gpus_per_node <= MAX_GPUS_PER_NODE, "gpus_per_node",
                 f"must be in 0..{MAX_GPUS_PER_NODE} (0 = CPU pods; no node type has more), got {self.gpus_per_node}")
        for name in ("cpu", "memory", "shm_size"):
            q = getattr(self, name)
            _require(bool(_QUANTITY.match(q)), name, f"must be a Kubernetes quantity such as 8, 500m, 64Gi, got {q!r}")
        _require(not (self.precision == "fp16" and self.gpus_per_node == 0), "precision",
                 "fp16 needs GPUs (DeepSpeed refuses it on CPU); use fp32 or bf16, or set gpus_per_node")
        _require(self.zero_stage is None or self.zero_stage in (1, 2, 3), "zero_stage",
                 f"must be 1, 2, 3 or null, got {self.zero_stage}")
        for k, v in self.node_selector.items():
            _require(bool(k) and bool(v) and not any(c.isspace() for c in k + v), "node_selector",
                     f"keys and values must be non-empty label strings, got {k!r}: {v!r}")
        for name in ("service_account", "pipeline_service_account", "data_pvc", "checkpoints_pvc", "mlflow_secret",
                     "milvus_secret", "s3_secret"):
            v = getattr(self, name)
            _require(v is None or bool(_DNS_SUBDOMAIN.match(v)), name,
                     f"must be a Kubernetes object name (lower-case DNS name) or null, got {v!r}")
        _require(self.kfp_namespace is None or (bool(_DNS_LABEL.match(self.kfp_namespace)) and len(self.kfp_namespace) <= 63),
                 "kfp_namespace", f"must be a Kubernetes namespace name or null, got {self.kfp_namespace!r}")
        _require(self.checkpoints_pvc is None or self.checkpoints_mount != self.data_mount, "checkpoints_mount",
                 f"must differ from data_mount ({self.data_mount})")
        _require(self.mlflow_tracking_uri is None or "://" in self.mlflow_tracking_uri, "mlflow_tracking_uri",
                 f"must be a URI such as http://mlflow.tuna.svc:5000, got {self.mlflow_tracking_uri!r}")
        _require(0.1 <= self.poll_seconds <= 3600, "poll_seconds", f"must be in 0.1..3600, got {self.poll_seconds}")
        _require(self.follow_timeout > 0, "follow_timeout", f"must be > 0 seconds, got {self.follow_timeout}")


