"""Kubeflow Pipelines: compile the versioned pipeline, submit it to a KFP host, run it with ``kfp.local``; and the
task functions the components (``components/<step>/component.py``) call.

The third front door of DESIGN.md: the same library calls as ``tuna <verb>`` and ``dvc repro``, one
lightweight component per step, wired by ``pipelines/tuna.py``. This is the only module under
``platform/tuna`` that imports ``kfp`` (inside functions: the task functions below run in every pipeline pod
and never need it).

Front door (``tuna pipeline compile|submit|run --local``):

* :func:`compile_pipeline` writes ``pipelines/compiled/tuna-<version>.yaml``; the version is the package
  version plus the git short sha (:func:`pipeline_version`, e.g. ``0.1.0+abc1234``); the output is
  deterministic (a golden copy compiled with :data:`GOLDEN_VERSION` is kept and compared in the tests).
* :func:`submit` uploads that IR as a pipeline version with ``kfp.Client`` and creates a run in an experiment.
* :func:`run_local` runs the same pipeline (same components, same DAG, same IR) through
  ``kfp.local.SubprocessRunner(use_venv=False)`` with ``target="local"``: no PVCs, Secrets, node selectors or
  accelerators (kfp.local ignores the Kubernetes platform spec), ``run.data_dir`` is this machine's folder,
  training runs on local DeepSpeed ranks and ``deploy`` runs the local tritonserver demo.

Task functions (``run_<step>``): each loads the recipe with the overrides the ``validate`` task resolved, calls
the step's library function (skipped when its outputs are up to date, like ``tuna run``) and returns a
:class:`TaskResult` whose manifest the component writes into its output artifact and whose metadata (counts,
hashes, fingerprints, uri) it attaches. Steps share data through ``run.data_dir`` (a PVC on a cluster);
artifacts carry provenance. A user error ends the task with one line (:func:`task`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tuna import __version__
from tuna.errors import TunaError
from tuna.layout import layout
from tuna.recipe import Recipe, load_recipe

if TYPE_CHECKING:
    from tuna.track import Run

IMAGE_REPOSITORY = "ghcr.io/tuna-platform/tuna"
BASE_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"  # the project image every component runs in
PIPELINE_NAME = "tuna"
DEFAULT_RECIPE = "configs/mini.yaml"               # relative to the image's workdir (the repository)
GOLDEN_VERSION = "golden"                          # version string of pipelines/compiled/tuna-golden.yaml
REPO_ENV = "TUNA_REPO"                             # where pipelines/ and components/ are, when not beside the package
ERROR_FILE_ENV = "TUNA_TASK_ERROR_FILE"            # run_local asks failing tasks to leave their one-line error here
TARGETS = ("kubernetes", "local")
LAUNCHERS = ("local", "trainjob", "pytorchjob")
DEPLOY_TARGETS = ("local", "helm", "none")
SERVING_SOURCES = ("pvc", "mlflow")
VARIANTS = ("tuna", "baseline")                    # trained and evaluated by the pipeline, like `tuna run`
MAX_TRAIN_NODES = 64
MAX_GPUS_PER_NODE = 16
# Secret keys that become env vars of the pipeline pods (the same shapes `tuna train --launcher trainjob` mounts).
SECRET_ENV = {
    "mlflow_secret": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "s3_secret": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    "milvus_secret": ("MILVUS_TOKEN",),
}
SECRET_OPTIONAL_ENV = {"s3_secret": ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_K8S_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")


class PipelineError(TunaError):
    """The pipeline cannot be compiled, submitted or run as asked; the message names the input and the fix."""


# --------------------------------------------------------------------------------------------- compile-time options


@dataclass(frozen=True)
class PipelineOptions:
    """Compile-time settings of the pipeline (KFP bakes Kubernetes settings into the IR; they are not run parameters).

    ``gpu`` puts every training task on ``gpus_per_node`` accelerators of type ``accelerator`` on nodes matching
    ``gpu_node_selector`` and tolerating ``gpu_tolerations`` ((key, operator, effect) triples). ``data_mount`` and
    ``checkpoints_mount`` are where the data and checkpoints PVCs (pipeline parameters) are mounted in every pod.
    """

    gpu: bool = False
    gpus_per_node: int = 8
    accelerator: str = "nvidia.com/gpu"
    gpu_node_selector: tuple[tuple[str, str], ...] = (("nvidia.com/gpu.present", "true"),)
    gpu_tolerations: tuple[tuple[str, str, str], ...] = (("nvidia.com/gpu", "Exists", "NoSchedule"),)
    data_mount: str = "/mnt/tuna"
    checkpoints_mount: str = "/mnt/tuna-checkpoints"
    version: str = __version__

    def __post_init__(self) -> None:
        if not 1 <= self.gpus_per_node <= MAX_GPUS_PER_NODE:
            raise PipelineError(f"gpus_per_node: {self.gpus_per_node} is out of range 1..{MAX_GPUS_PER_NODE}")
        if not self.accelerator or not _K8S_VALUE.match(self.accelerator):
            raise PipelineError(f"accelerator: {self.accelerator!r} is not an extended resource name such as nvidia.com/gpu")
        for key, value in self.gpu_node_selector:
            if not _K8S_VALUE.match(key) or not (value == "" or _K8S_VALUE.match(value)):
                raise PipelineError(f"gpu_node_selector: {key!r}: {value!r} is not a Kubernetes label")
        for key, operator, effect in self.gpu_tolerations:
            if operator not in ("Exists", "Equal") or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise PipelineError(f"gpu_tolerations: ({key!r}, {operator!r}, {effect!r}): operator must be Exists or "
                                    f"Equal and effect NoSchedule, PreferNoSchedule or NoExecute")
        for name in ("data_mount", "checkpoints_mount"):
            path = getattr(self, name)
            if not path.startswith("/") or posixpath.normpath(path) in ("/", "/tmp"):
                raise PipelineError(f"{name}: {path!r} must be an absolute folder in the pod (not / or /tmp)")
        if posixpath.normpath(self.data_mount) == posixpath.normpath(self.checkpoints_mount):
            raise PipelineError(f"checkpoints_mount: must differ from data_mount ({self.data_mount})")
        if not self.version or any(c.isspace() for c in self.version):
            raise PipelineError(f"version: {self.version!r} must be a non-empty string without spaces")


# --------------------------------------------------------------------------------------------- where the DAG lives


def repo_root() -> Path:
    """The checkout holding ``pipelines/`` and ``components/``: ``$TUNA_REPO``, else the folder above ``platform/``."""
    env = os.environ.get(REPO_ENV)
    root = Path(env).expanduser() if env else Path(__file__).resolve().parents[2]
    if not (root / "pipelines" / "tuna.py").is_file():
        raise PipelineError(f"{root / 'pipelines' / 'tuna.py'} not found: run from a checkout of the repository "
                            f"(or set {REPO_ENV} to it); the installed package does not carry the pipeline")
    return root


def load_pipeline_module() -> Any:
    """Import ``pipelines/tuna.py`` (by path: ``pipelines/`` is not a package) and return the module."""
    import importlib.util

    path = repo_root() / "pipelines" / "tuna.py"
    name = "tuna_pipelines_tuna"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def pipeline_version() -> str:
    """``<package version>+<git short sha>`` (``.dirty`` appended when tracked files differ from the commit)."""
    sha = _git("rev-parse", "--short=7", "HEAD")
    if not sha:
        return f"{__version__}+unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}"


def compiled_name(version: str, gpu: bool = False) -> str:
    return f"{PIPELINE_NAME}-{version}{'-gpu' if gpu else ''}.yaml"


def compile_pipeline(out_dir: str | Path, version: str, gpu: bool = False) -> Path:
    """Compile the pipeline to ``<out_dir>/tuna-<version>[-gpu].yaml`` (byte-identical for the same code and version)."""
    from kfp import compiler

    options = PipelineOptions(gpu=gpu, version=version)
    if "/" in version or version in (".", ".."):
        raise PipelineError(f"version {version!r} cannot be part of a file name")
    pipeline = load_pipeline_module().build_pipeline(options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / compiled_name(version, gpu)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return path


# --------------------------------------------------------------------------------------------- submit


def _probe_kfp(host: str, timeout: float = 5.0) -> None:
    """One-line PipelineError when nothing answers at ``host`` (any HTTP status counts as an answer)."""
    if not host.startswith(("http://", "https://")):
        raise PipelineError(f"--host {host!r}: give the KFP API URL with its scheme, e.g. http://localhost:8888")
    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PipelineError(f"KFP host {host} is unreachable ({reason}); check the URL, or port-forward the API: "
                            f"kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8888:80") from None


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "reason", "") or err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def submit(host: str, experiment: str, version: str, params: Mapping[str, Any], gpu: bool = False,
           run_name: str | None = None, enable_caching: bool | None = None, out_dir: str | Path | None = None,
           client_factory: Callable[[str], Any] | None = None) -> dict[str, str]:
    """Upload the compiled pipeline as version ``version`` of pipeline ``tuna`` on ``host`` and start a run in
    ``experiment`` with ``params``; returns the ids and the run's URL. An existing version of that name is reused."""
    if not experiment.strip():
        raise PipelineError("experiment: give a KFP experiment name (e.g. tuna)")
    _probe_kfp(host)
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="tuna-pipeline-"))
    path = compile_pipeline(folder, version, gpu=gpu)
    if client_factory is None:
        import kfp

        def client_factory(h: str) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return kfp.Client(host=h)
    version_name = f"{version}{'-gpu' if gpu else ''}"
    try:
        client = client_factory(host)
        pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(str(path), pipeline_name=PIPELINE_NAME,
                                                 description="TUNA: world -> datastores -> training -> eval -> serving").pipeline_id
        version_id = None
        listing = client.list_pipeline_versions(pipeline_id, page_size=1, filter=json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]}))
        for v in getattr(listing, "pipeline_versions", None) or []:
            version_id = v.pipeline_version_id
        if version_id is None:
            version_id = client.upload_pipeline_version(str(path), pipeline_version_name=version_name,
                                                        pipeline_id=pipeline_id).pipeline_version_id
        exp = client.create_experiment(experiment)
        name = run_name or f"{PIPELINE_NAME}-{version_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=dict(params),
                                  pipeline_id=pipeline_id, version_id=version_id, enable_caching=enable_caching)
    except TunaError:
        raise
    except Exception as err:  # noqa: BLE001 - ApiException, urllib3 errors...: one line naming the host
        raise PipelineError(f"KFP host {host}: {type(err).__name__}: {_first_line(err)}") from None
    return {"pipeline_id": pipeline_id, "version_id": version_id, "version": version_name, "experiment_id": exp.experiment_id,
            "run_id": run.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}", "package": str(path)}


def submit_params(config: str, overrides: Sequence[str], params: Sequence[str] = ()) -> dict[str, Any]:
    """Pipeline arguments from the CLI: the recipe path (as seen in the image), the overrides, ``name=value`` pairs."""
    import yaml

    out: dict[str, Any] = {"config": config, "overrides": list(overrides)}
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--param {item!r}: expected name=value, e.g. mlflow_secret=tuna-mlflow")
        value = yaml.safe_load(raw) if raw.strip() else ""
        out[key.strip()] = value
    return out


# --------------------------------------------------------------------------------------------- run with kfp.local


class _ProgressLog(io.TextIOBase):
    """kfp.local's output: every line to ``log``; task starts/ends, task errors and our step lines to ``screen``."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")
    _SHOW = re.compile(r"Executing task|finished with status|Pipeline '.*' finished|: error: |asked '|provenance: "
                       r"|tritonserver ready")

    _START = re.compile(r"Executing task '([^']+)'")
    _END = re.compile(r"Task '([^']+)' finished with status")

    def __init__(self, log: TextIO, screen: TextIO) -> None:
        self.log, self.screen, self._buf = log, screen, ""
        self._started: dict[str, float] = {}

    def write(self, text: str) -> int:
        self.log.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            clean = self._ANSI.sub("", line).strip()
            if self._SHOW.search(clean):
                shown = clean.split(" - INFO - ")[-1]
                if (m := self._START.search(shown)):
                    self._started[m.group(1)] = time.perf_counter()
                elif (m := self._END.search(shown)) and m.group(1) in self._started:
                    shown += f" ({time.perf_counter() - self._started.pop(m.group(1)):.1f} s)"
                self.screen.write(shown + "\n")
                self.screen.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def run_local(config: str | Path, overrides: Sequence[str] = (), pipeline_root: str | Path | None = None,
              params: Mapping[str, Any] | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run the pipeline on this machine through ``kfp.local.SubprocessRunner(use_venv=False)``.

    The same IR as :func:`compile_pipeline` (CPU build) with ``target="local"``, ``launcher="local"`` and
    ``deploy_target="local"``; ``run.data_dir`` is made absolute (the tasks are subprocesses). Task outputs
    go to ``<pipeline_root>/<tuna-timestamp>/<task>/`` (default root ``<data_dir>/kfp``). A failing task
    raises PipelineError with that task's one-line error. With ``verbose`` False, kfp.local's output goes to
    ``<run root>/pipeline-<time>.log`` and the screen shows task progress and the serving answer only.
    """
    from kfp import local

    cfg = load_recipe(config, overrides)  # a bad recipe or override fails here, before kfp starts anything
    data_dir = cfg.data_dir.resolve()
    resolved = [o for o in overrides if not o.strip().startswith("run.data_dir=")] + [f"run.data_dir={data_dir}"]
    root = Path(pipeline_root).resolve() if pipeline_root else layout(cfg).kfp.resolve()
    root.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline_module().build_pipeline(PipelineOptions())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    args = {"config": str(Path(config).resolve()), "overrides": resolved, "target": "local", "launcher": "local",
            "deploy_target": "local", **(params or {})}
    before = {p.name for p in root.iterdir()}
    error_file = Path(tempfile.mkstemp(prefix="tuna-task-error-")[1])
    old = os.environ.get(ERROR_FILE_ENV)
    os.environ[ERROR_FILE_ENV] = str(error_file)
    t0 = time.perf_counter()
    log_path = root / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            if not verbose:
                log = stack.enter_context(open(log_path, "w", encoding="utf-8"))
                stack.enter_context(contextlib.redirect_stdout(_ProgressLog(log, sys.stdout)))
                print(f"kfp.local log: {log_path}", file=sys.stderr)
            pipeline(**args)
    except RuntimeError as err:
        detail = error_file.read_text(encoding="utf-8").strip() if error_file.is_file() else ""
        raise PipelineError(f"kfp.local: {detail or _first_line(err)}") from None
    finally:
        if old is None:
            os.environ.pop(ERROR_FILE_ENV, None)
        else:
            os.environ[ERROR_FILE_ENV] = old
        error_file.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    new = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in before), key=lambda p: p.stat().st_mtime)
    run_dir = new[-1] if new else root
    return {"pipeline_root": str(root), "run_dir": str(run_dir), "seconds": seconds, "data_dir": str(data_dir),
            "tasks": sorted(p.name for p in run_dir.iterdir() if p.is_dir()), "log": None if verbose else str(log_path)}


# --------------------------------------------------------------------------------------------- task plumbing


@dataclass
class TaskResult:
    """What a task hands its component: the manifest written into the artifact, its metadata, tracked numbers."""

    manifest: dict[str, Any]
    metadata: dict[str, Any]
    summary: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def _message(err: BaseException) -> str:
    """The error's text (a KeyError subclass would add quotes around it)."""
    if len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err)


@contextlib.contextmanager
def task(name: str) -> Iterator[None]:
    """Run a component body: a TunaError ends the task with one line ``<name>: error: <message>`` (exit code 1).

    Internal errors keep their traceback. When ``$TUNA_TASK_ERROR_FILE`` is set (``run_local``), the line is also
    written there so the caller can repeat it.
    """
    try:
        yield
    except TunaError as err:
        line = f"{name}: error: {_message(err)}".splitlines()[0]
        path = os.environ.get(ERROR_FILE_ENV)
        if path:
            with contextlib.suppress(OSError):
                Path(path).write_text(line + "\n", encoding="utf-8")
        raise SystemExit(line) from None


def _plain(value: Any) -> Any:
    """JSON-able copy (paths and other objects become strings; NaN becomes None)."""
    text = json.dumps(value, default=str, allow_nan=True)
    return json.loads(text, parse_constant=lambda _: None)


def publish(artifact: Any, result: TaskResult) -> None:
    """Write ``result.manifest`` as JSON to ``artifact.path`` and merge ``result.metadata`` into its metadata."""
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(result.manifest), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    artifact.metadata.update(_plain(result.metadata))


def publish_metrics(artifact: Any, metrics: Mapping[str, float]) -> None:
    """``log_metric`` every finite number of ``metrics`` on a KFP Metrics artifact."""
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            artifact.log_metric(key, float(value))


def publish_markdown(artifact: Any, text: str, metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``text`` to a KFP Markdown artifact (and merge ``metadata``)."""
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    artifact.metadata.update(_plain(dict(metadata or {})))


def _load(config: str, overrides: Sequence[str]) -> Recipe:
    if not isinstance(overrides, (list, tuple)):
        raise PipelineError(f"overrides: must be a list of key=value strings, got {overrides!r}")
    return load_recipe(config, [str(o) for o in overrides])


def _uri(cfg: Recipe, path: str | Path) -> str:
    """``pvc://<claim>/<path>`` for a folder on the data PVC, else the absolute local path."""
    p = posixpath.normpath(str(path) if str(path).startswith("/") else str(Path(path).resolve()))
    c = cfg.cluster
    mount = posixpath.normpath(c.data_mount)
    if c.data_pvc and (p + "/").startswith(mount + "/"):
        return f"pvc://{c.data_pvc}/{posixpath.relpath(p, mount)}"
    return p


def _provenance(cfg: Recipe, step: str, status: str) -> dict[str, Any]:
    return {"step": step, "status": status, "recipe": cfg.run.name, "seed": cfg.run.seed,
            "data_dir": str(cfg.data_dir.resolve()), "tuna_version": __version__}


def _numbers(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the finite numbers of a nested mapping: {"counts": {"web_A": 300}} -> {"counts.web_A": 300.0}."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _metric_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", name)


@contextlib.contextmanager
def _stage(cfg: Recipe, parent: str, name: str) -> Iterator[Run]:
    """A nested MLflow run under the pipeline's parent run (top-level when ``parent`` is empty)."""
    from tuna import track

    with track.stage_run(name, cfg, parent_run_id=parent or None) as run:
        run.set_tags({"tuna.front_door": "kfp"})
        yield run


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------- validate + MLflow run


def _data_dir_override(cfg: Recipe, data_root: str) -> list[str]:
    """On a cluster a relative run.data_dir lands on the data PVC (as `tuna train --launcher trainjob` does)."""
    if data_root and not cfg.run.data_dir.startswith("/"):
        return [f"run.data_dir={posixpath.join(data_root, cfg.run.data_dir)}"]
    return []


def validate_inputs(config: str, overrides: Sequence[str], *, target: str = "local", data_root: str = "",
                    checkpoints_root: str = "", gpus: int = 0, data_pvc: str = "", checkpoints_pvc: str = "",
                    mlflow_secret: str = "", milvus_secret: str = "", s3_secret: str = "", launcher: str = "local",
                    train_nodes: int = 1, deploy_target: str = "local", serving_source: str = "pvc",
                    serve_datastore: str = "", register_alias: str = "evaluated", gate_metric: str = "",
                    gate_min: float = 0.0) -> tuple[list[str], str]:
    """Check every pipeline parameter and the recipe before anything runs; return (resolved overrides, export root).

    The resolved overrides carry the cluster's settings into the recipe (data dir on the data PVC, PVC and
    Secret names, nodes, GPUs, serving datastore) so every later task - and the TrainJobs it creates - reads the
    same config. Any problem raises PipelineError / ConfigError naming the parameter or key.
    """
    from tuna.retrieval.datastore import DATASTORES

    def bad(name: str, message: str) -> PipelineError:
        return PipelineError(f"pipeline parameter {name}: {message}")

    if target not in TARGETS:
        raise bad("target", f"{target!r} is not one of {', '.join(TARGETS)}")
    cluster = target == "kubernetes"
    if launcher not in LAUNCHERS:
        raise bad("launcher", f"{launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if launcher != "local" and not cluster:
        raise bad("launcher", f"{launcher!r} creates jobs on Kubernetes; with target=local use launcher=local")
    if not isinstance(train_nodes, int) or isinstance(train_nodes, bool) or not 1 <= train_nodes <= MAX_TRAIN_NODES:
        raise bad("train_nodes", f"{train_nodes!r} is out of range 1..{MAX_TRAIN_NODES}")
    if train_nodes > 1 and launcher == "local":
        raise bad("train_nodes", f"{train_nodes} nodes need launcher=trainjob or pytorchjob (local trains in one pod)")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 0 <= gpus <= MAX_GPUS_PER_NODE:
        raise bad("gpus", f"{gpus!r} is out of range 0..{MAX_GPUS_PER_NODE}")
    if deploy_target not in DEPLOY_TARGETS:
        raise bad("deploy_target", f"{deploy_target!r} is not one of {', '.join(DEPLOY_TARGETS)}")
    if deploy_target == "helm" and not cluster:
        raise bad("deploy_target", "helm installs into a Kubernetes cluster; with target=local use deploy_target=local")
    if deploy_target == "local" and cluster:
        raise bad("deploy_target", "local starts tritonserver inside the task pod and stops it; on Kubernetes use helm "
                                   "(or none)")
    if serving_source not in SERVING_SOURCES:
        raise bad("serving_source", f"{serving_source!r} is not one of {', '.join(SERVING_SOURCES)}")
    if serve_datastore and serve_datastore not in DATASTORES:
        raise bad("serve_datastore", f"unknown datastore {serve_datastore!r}; known: {', '.join(DATASTORES)}")
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
                     f"cluster.s3_secret={s3_secret}", f"cluster.num_nodes={train_nodes}"]
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
    return resolved, export_root


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
    from tuna.world.generate import generate_world, is_up_to_date

    cfg = _load(config, overrides)
    status = "up to date" if is_up_to_date(cfg) else "generated"
    if status == "generated":
        generate_world(cfg, progress=False)
    root = layout(cfg).world
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
        m = _read_json(layout(cfg).tags(d) / MANIFEST_FILE)
        manifests[d] = m
        per[d] = {"count": m["count"], "skipped": m["skipped"], "unique_tags": m.get("unique_tags"),
                  "unique_objects": m.get("unique_objects"), "tags_per_caption": m.get("tags_per_caption"),
                  "input_hash": m.get("input_hash"), "uri": _uri(cfg, layout(cfg).tags(d))}
    status = "up to date" if all(s == "up to date" for s in statuses) else "mined"
    meta = {**_provenance(cfg, "mine", status), "uri": _uri(cfg, layout(cfg).tags_root), "domains": per}
    return TaskResult(manifests, meta, "; ".join(f"{d}: {p['count']} captions" for d, p in per.items()))


def run_index(config: str, overrides: Sequence[str], datastore: str = "all") -> TaskResult:
    """`tuna index`: build datastore A, B, A_captions or all (each skipped when up to date)."""
    from tuna.retrieval.datastore import (
        DATASTORES,
        build_datastore,
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
                     "uri": uri if "://" in str(uri) else _uri(cfg, uri or layout(cfg).datastore(name))}
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
    from tuna.train.engine import is_up_to_date
    from tuna.variants import variant_model

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
    folder = layout(cfg).stage(variant, stage)
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
        evaluate_variant,
        is_up_to_date,
        summarize,
        table,
    )
    from tuna.variants import VARIANTS as KNOWN

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
    meta = {**_provenance(cfg, "eval", status), "variants": names, "uri": _uri(cfg, layout(cfg).eval),
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


__all__ = ["BASE_IMAGE", "GOLDEN_VERSION", "PipelineError", "PipelineOptions", "TaskResult", "compile_pipeline",
           "load_pipeline_module", "pipeline_version", "publish", "publish_markdown", "publish_metrics", "repo_root",
           "run_deploy", "run_encoder_step", "run_evaluate", "run_export", "run_index", "run_lm_step", "run_local",
           "run_mine", "run_notify", "run_register", "run_train", "run_world", "start_run", "submit", "submit_params",
           "task", "validate_inputs"]
