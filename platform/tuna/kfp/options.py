"""What the pipeline is compiled with (:class:`PipelineOptions`: the recipe's ``cluster:`` section and a version) and
the names every part of the KFP front door shares (project image, pipeline name, parameter choices, Secret keys).

KFP bakes Kubernetes settings into the IR, so they are compile-time options, not run parameters; they come from the
recipe's ``cluster:`` section only (``tuna pipeline compile --config <recipe>``): the pods' image, the mount paths of
the data and checkpoints PVCs, and how training runs (``cluster.launcher``). With the ``local`` launcher the four
training tasks train in their own pod, so they get ``cluster.gpus_per_node`` accelerators, ``cluster.node_selector``
and ``cluster.tolerations``; with ``trainjob`` / ``pytorchjob`` a training task only submits the job and follows it
(the job's pods get the GPUs), so no task of the pipeline requests an accelerator.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field

from tuna import __version__
from tuna.errors import TunaError
from tuna.recipe import ClusterConfig, Recipe

# The components' default image is the recipe schema's default cluster.image (one place: tuna.recipe.cluster); a
# compiled pipeline's pods run the recipe's cluster.image (pipelines/tuna.py sets it on every task).
BASE_IMAGE = ClusterConfig().image
PIPELINE_NAME = "tuna"
DEFAULT_RECIPE = "configs/mini.yaml"               # relative to the image's workdir (the repository)
GOLDEN_VERSION = "golden"                          # version string of pipelines/compiled/tuna-golden.yaml
ERROR_FILE_ENV = "TUNA_TASK_ERROR_FILE"            # run_local asks failing tasks to leave their one-line error here
IMAGE_UID = 1000                                   # the project image's user and group (Dockerfile: USER 1000:1000)
ACCELERATOR = "nvidia.com/gpu"                     # the extended resource GPUs are requested as (as tuna.train.cluster does)
TARGETS = ("kubernetes", "local")
LAUNCHERS = ("local", "trainjob", "pytorchjob")    # = the values of cluster.launcher
DEPLOY_TARGETS = ("local", "helm", "none")
SERVING_SOURCES = ("pvc", "mlflow")
VARIANTS = ("tuna", "baseline")                    # trained and evaluated by the pipeline, like `tuna run`
TRAINING_ORDER = ("baseline", "tuna")              # TUNA's stage-2 task waits for the baseline's (train.stage2.init_from)
WORLD_DATASTORES = ("A", "B", "A_captions")        # a recipe without a datastores: section (tuna.retrieval.datastore)
# Secret keys that become env vars of the pipeline pods (the same shapes `tuna train --launcher trainjob` mounts).
SECRET_ENV = {
    "mlflow_secret": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "s3_secret": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    "milvus_secret": ("MILVUS_TOKEN",),
}
SECRET_OPTIONAL_ENV = {"s3_secret": ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")}


class PipelineError(TunaError):
    """The pipeline cannot be compiled, submitted or run as asked; the message names the input and the fix."""


def _first_line(err: BaseException) -> str:
    """The first line of an engine's error (kfp, the KFP API), for a one-line PipelineError."""
    text = str(getattr(err, "reason", "") or err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


@dataclass(frozen=True)
class PipelineOptions:
    """Compile-time settings of the pipeline: the recipe's ``cluster:`` section (validated when the recipe loads)
    and the version written into the IR. ``PipelineOptions()`` is the default build (``ClusterConfig()``: CPU, local
    launcher, mounts at /mnt/tuna and /mnt/tuna-checkpoints), the one ``kfp.local`` runs."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    version: str = __version__
    datastores: tuple[str, ...] = WORLD_DATASTORES   # the recipe's datastores: one index task each
    model_datastore: str = "A"                       # model.datastore: the one the training tasks read

    @classmethod
    def of(cls, cfg: Recipe, version: str = __version__, cluster: ClusterConfig | None = None) -> PipelineOptions:
        """The options a recipe compiles to: its cluster section (or ``cluster``) and its declared datastores."""
        return cls(cluster=cluster or cfg.cluster, version=version, datastores=tuple(cfg.datastores),
                   model_datastore=cfg.model.datastore)

    def __post_init__(self) -> None:
        if self.model_datastore not in self.datastores:
            raise PipelineError(f"model.datastore: {self.model_datastore!r} is not one of the datastores "
                                f"{', '.join(self.datastores)}")
        c = self.cluster
        for name in ("data_mount", "checkpoints_mount"):  # the pipeline mounts both PVCs in its pods
            if posixpath.normpath(getattr(c, name)) in ("/", "/tmp"):
                raise PipelineError(f"cluster.{name}: {getattr(c, name)!r} must be a folder of its own in the pod "
                                    f"(not / or /tmp), e.g. /mnt/tuna")
        if posixpath.normpath(c.data_mount) == posixpath.normpath(c.checkpoints_mount):
            raise PipelineError(f"cluster.checkpoints_mount: must differ from cluster.data_mount ({c.data_mount}): "
                                f"the pipeline mounts the data and the checkpoints PVC in the same pods")
        if not self.version or any(ch.isspace() for ch in self.version):
            raise PipelineError(f"version: {self.version!r} must be a non-empty string without spaces")

    @property
    def launcher(self) -> str:
        return self.cluster.launcher

    @property
    def trains_in_task(self) -> bool:
        """True when the training tasks train in their own pod (local launcher); False when they submit a job."""
        return self.launcher == "local"

    @property
    def train_gpus(self) -> int:
        """Accelerators each training task requests: the recipe's GPUs per node with the local launcher, else 0."""
        return self.cluster.gpus_per_node if self.trains_in_task else 0

    @property
    def suffix(self) -> str:
        """What the compiled file and the KFP pipeline version append to the version: "" for the default build,
        else the launcher, the GPUs of a training task and a digest of the cluster settings that reach the IR
        (two recipes with different settings never share a version name on the KFP host)."""
        if self.ir_settings() == PipelineOptions(version=self.version).ir_settings():
            return ""
        digest = hashlib.sha256(json.dumps(self.ir_settings(), sort_keys=True).encode()).hexdigest()[:8]
        return f"-{self.launcher}{f'-gpu{self.train_gpus}' if self.train_gpus else ''}-{digest}"

    def ir_settings(self) -> dict[str, object]:
        """The cluster settings the compiled IR depends on."""
        c = self.cluster
        out: dict[str, object] = {"image": c.image, "launcher": c.launcher, "data_mount": c.data_mount,
                                  "checkpoints_mount": c.checkpoints_mount, "trtllm": c.gpus_per_node > 0}
        if (self.datastores, self.model_datastore) != (WORLD_DATASTORES, "A"):
            out.update(datastores=list(self.datastores), model_datastore=self.model_datastore)
        if self.trains_in_task:
            out.update(gpus=c.gpus_per_node, node_selector=dict(sorted(c.node_selector.items())),
                       tolerations=[asdict(t) for t in c.tolerations], cpu=c.cpu, memory=c.memory, shm_size=c.shm_size)
        return out


__all__ = ["ACCELERATOR", "BASE_IMAGE", "DEFAULT_RECIPE", "DEPLOY_TARGETS", "ERROR_FILE_ENV", "GOLDEN_VERSION", "IMAGE_UID",
           "LAUNCHERS", "PIPELINE_NAME", "SECRET_ENV", "SECRET_OPTIONAL_ENV",
           "SERVING_SOURCES", "TARGETS", "TRAINING_ORDER", "VARIANTS", "WORLD_DATASTORES", "PipelineError", "PipelineOptions"]
