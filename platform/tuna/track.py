"""MLflow tracking: one parent run per pipeline run, a nested run per stage, the model registry and `tuna ui`.

The only module that imports mlflow (imported inside functions: nothing happens at import time).

Where runs go (first match wins):
1. the environment variable ``MLFLOW_TRACKING_URI`` (overrides the recipe, e.g. in a pod);
2. ``track.tracking_uri`` in the recipe (``http://mlflow.tuna.svc:5000`` on the cluster);
3. ``sqlite:///<abs data_dir>/mlflow/mlflow.db`` with artifacts under ``<data_dir>/mlflow/artifacts``.

A new experiment gets ``track.artifact_root`` as its artifact location, else ``artifacts/`` next to a
sqlite database, else the server's default (S3 or mlflow-artifacts: on the cluster). Runs are written
by id through ``MlflowClient`` (no fluent "active run" state), so a stage in another process can
attach to its parent run:
:func:`pipeline_run` exports ``TUNA_MLFLOW_PARENT_RUN_ID`` and ``MLFLOW_TRACKING_URI`` while it is
open; a subprocess (a ``tuna`` verb, each DeepSpeed rank) inherits them and :func:`stage_run` opens a
nested run under that parent. Only global rank 0 (``RANK`` unset or ``0``) writes; other ranks get a
disabled :class:`Run` whose methods do nothing.

Under KFP 2.17's MLflow plugin every task finds the run the plugin opened for it in ``MLFLOW_RUN_ID`` (nested
under the plugin's run of the whole pipeline; ``MLFLOW_TRACKING_URI`` names the server). Then nothing opens a
top-level run: :func:`pipeline_run` writes the recipe into the plugin's pipeline run, :func:`task_run` writes a
task's own numbers into the task's run, and :func:`stage_run` (training stages, in the ranks) nests under it. The
plugin ends its runs; ours never end them.

Usage::

    with track.pipeline_run(cfg) as parent:          # params = flattened recipe, recipe.yaml artifact
        with track.stage_run("stage1", cfg) as run:  # nested run (also from a subprocess)
            run.log_metrics({"loss": 2.3, "lr": 1e-3}, step=10)
            run.log_loss_curve([(10, 2.3), (20, 1.9)])
            run.log_model_folder("data/mini/ckpt/stage1/hf")
        version = track.register_model(run.run_id, "model", cfg.track.registered_model, cfg=cfg)
    version, source = track.latest_good(cfg.track.registered_model, cfg=cfg)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuna import __version__
from tuna.errors import TunaError
from tuna.layout import layout
from tuna.recipe import Recipe

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARENT_RUN_ENV = "TUNA_MLFLOW_PARENT_RUN_ID"  # set by pipeline_run; read by stage_run in any process
INJECTED_RUN_ENV = "MLFLOW_RUN_ID"            # KFP's MLflow plugin: the run it opened for this task
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"      # MLflow's own variable; overrides track.tracking_uri
DEFAULT_ALIAS = "latest-good"
UI_HOST = "127.0.0.1"

PARAM_VALUE_LIMIT = 500       # oldest server limit still deployed (3.x accepts 6000); longer values are cut
TAG_VALUE_LIMIT = 5000
PARAMS_PER_BATCH = 100        # MLflow's MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000      # MLflow's MAX_METRICS_PER_BATCH
KEY_LIMIT = 250               # MLflow's MAX_ENTITY_KEY_LENGTH


# ---------------------------------------------------------------- where runs go

def _mlflow_env() -> None:
    """Process settings MLflow reads: no telemetry, no progress bars (kept if the user set them)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _client(uri: str, retries: int = 3, backoff_seconds: float = 0.3) -> MlflowClient:
    """An MlflowClient for ``uri``; a server URI is probed first (bounded retries) so a dead server fails fast."""
    _mlflow_env()
    if urllib.parse.urlparse(uri).scheme in ("http", "https"):
        _probe(uri, retries, backoff_seconds)
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # schema migrations and store notices are not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _probe(uri: str, retries: int, backoff_seconds: float) -> None:
    """Raise a one-line TunaError when nothing answers at ``uri`` (any HTTP status counts as an answer)."""
    reason = ""
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=2.0):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
        if attempt + 1 < retries:
            time.sleep(backoff_seconds * 2**attempt)
    raise TunaError(f"MLflow tracking server {uri} is unreachable ({reason}) after {retries} tries; start it "
                    f"(mlflow server --host 127.0.0.1 --port N), or point track.tracking_uri / {TRACKING_URI_ENV} at a "
                    f"running server, or set track.tracking_uri=null for the local sqlite store")


def _default_store(cfg: Recipe) -> Path:
    return layout(cfg).mlflow


def tracking_uri(cfg: Recipe | None = None) -> str:
    """The tracking URI: $MLFLOW_TRACKING_URI, else track.tracking_uri, else sqlite under <data_dir>/mlflow."""
    env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if env:
        return env
    if cfg is None:
        raise TunaError(f"no MLflow tracking store: pass a recipe (--config) or set {TRACKING_URI_ENV}")
    if cfg.track.tracking_uri:
        return cfg.track.tracking_uri
    return f"sqlite:///{_default_store(cfg) / 'mlflow.db'}"


def artifact_location(cfg: Recipe | None, uri: str) -> str | None:
    """Artifact location for a new experiment: track.artifact_root, else ``artifacts/`` next to a sqlite db, else None."""
    root = cfg.track.artifact_root if cfg is not None else None
    if root:
        return root if "://" in root else Path(root).resolve().as_uri()
    if uri.startswith("sqlite:///"):  # never MLflow's ./mlruns in whatever folder the process started in
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts").as_uri()
    return None  # the server's (or store's) default


def _open_store(cfg: Recipe | None) -> tuple[str, MlflowClient]:
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri, _client(uri)


def _experiment_id(client: MlflowClient, name: str, location: str | None, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TunaError(f"experiment {name!r} is deleted in {uri}; restore it (mlflow experiments restore "
                        f"--experiment-id {exp.experiment_id}) or set track.experiment to a new name")
    return exp.experiment_id


# ---------------------------------------------------------------- params

def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)  # None -> null, True -> true, [1, 4]
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"world.sizes.web": "12000", ...}; values YAML-like, cut to PARAM_VALUE_LIMIT chars."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            if len(name) > KEY_LIMIT:
                raise TunaError(f"param key {name[:60]!r}... is {len(name)} chars; MLflow allows {KEY_LIMIT}; shorten it")
            out[name] = _param_value(value)
    return out


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


# ---------------------------------------------------------------- runs

@dataclass
class Run:
    """One MLflow run opened by :func:`pipeline_run` or :func:`stage_run`; every write names the run by id.

    Metrics are buffered and sent in batches (at ``METRICS_PER_BATCH`` points, every ``flush_seconds``,
    and when the run ends). A disabled run (``run_id`` None: a rank other than 0) ignores every call.
    """

    client: MlflowClient | None
    run_id: str | None
    experiment_id: str | None
    flush_seconds: float = 5.0
    _pending: list[Any] = field(default_factory=list, repr=False)
    _last_flush: float = field(default_factory=time.monotonic, repr=False)

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @property
    def artifact_uri(self) -> str | None:
        """Where this run's artifacts live (a file:, mlflow-artifacts: or s3: URI)."""
        if self.client is None or self.run_id is None:
            return None
        return self.client.get_run(self.run_id).info.artifact_uri

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set string tags (values cut to TAG_VALUE_LIMIT chars)."""
        if self.client is None or self.run_id is None or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:TAG_VALUE_LIMIT]) for k, v in tags.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i: i + PARAMS_PER_BATCH])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested mappings are flattened to dotted keys), in batches of PARAMS_PER_BATCH."""
        if self.client is None or self.run_id is None or not params:
            return
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            try:
                self.client.log_batch(self.run_id, params=items[i: i + PARAMS_PER_BATCH])
            except MlflowException as err:
                first = str(err.message).splitlines()[0]
                raise TunaError(f"run {self.run_id}: cannot log params ({first}); a param is written once per run, "
                                f"log a changed value under a new key or in a new run") from None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Queue metrics (loss, lr, step_time_s, samples_per_s, ...) at ``step``; sent in batches."""
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TunaError(f"metric {key!r} = {value!r} is not a number; log a float (e.g. loss.item())") from None
            self._pending.append(Metric(key, number, now, step or 0))
        if len(self._pending) >= METRICS_PER_BATCH or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Send every queued metric now."""
        if self.client is not None and self.run_id is not None:
            while self._pending:
                batch, self._pending = self._pending[:METRICS_PER_BATCH], self._pending[METRICS_PER_BATCH:]
                self.client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (under ``artifact_path``) or a folder (its contents under ``artifact_path`` or its name)."""
        if self.client is None or self.run_id is None:
            return
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(self.run_id, str(p), artifact_path=artifact_path or p.name)
        elif p.is_file():
            self.client.log_artifact(self.run_id, str(p), artifact_path=artifact_path)
        else:
            raise TunaError(f"artifact {str(p)!r} does not exist; pass an existing file or folder")

    def log_loss_curve(self, points: Sequence[tuple[int, float]], name: str = "loss_curve.png",
                       artifact_path: str = "plots", title: str = "training loss") -> str:
        """Plot (step, loss) points to a PNG and upload it; returns its artifact path."""
        with tempfile.TemporaryDirectory(prefix="tuna-plot-") as tmp:
            loss_curve_png(points, Path(tmp) / name, title=title)
            self.log_artifact(Path(tmp) / name, artifact_path)
        return f"{artifact_path}/{name}"

    def log_model_folder(self, folder: str | Path, artifact_path: str = "model") -> str:
        """Upload a saved Hugging Face model folder (``save_pretrained`` output); returns its artifact path."""
        p = Path(folder)
        if not (p / "config.json").is_file():
            raise TunaError(f"{str(p)!r} is not a saved Hugging Face model (no config.json); pass the save_pretrained folder")
        self.log_artifact(p, artifact_path)
        return artifact_path


def _end(run: Run, status: str, error: BaseException | None) -> None:
    """Flush and terminate ``run``; a tracking failure after an error is attached to that error, not raised over it."""
    if run.client is None or run.run_id is None:
        return
    try:
        if error is not None and status == "FAILED":
            text = f"{type(error).__name__}: {error}".splitlines()[0]
            run.set_tags({"tuna.error": text})
        run.flush()
    except Exception as track_err:
        if error is None:
            run.client.set_terminated(run.run_id, "FAILED")
            raise
        error.add_note(f"(MLflow: also failed to record the failure: {track_err})")
    run.client.set_terminated(run.run_id, status)


@contextmanager
def _running(run: Run) -> Iterator[Run]:
    """Yield ``run``; end it FINISHED, FAILED (an exception) or KILLED (Ctrl-C) - never left RUNNING."""
    try:
        yield run
    except KeyboardInterrupt as err:
        _end(run, "KILLED", err)
        raise
    except SystemExit as err:
        _end(run, "FINISHED" if err.code in (0, None) else "FAILED", err)
        raise
    except BaseException as err:
        _end(run, "FAILED", err)
        raise
    else:
        _end(run, "FINISHED", None)


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextmanager
def exported_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore what was there."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def injected_run_id() -> str | None:
    """The run KFP's MLflow plugin opened for this task ($MLFLOW_RUN_ID), or None without the plugin."""
    return os.environ.get(INJECTED_RUN_ENV, "").strip() or None


def _injected(client: MlflowClient, uri: str) -> Any:
    """The plugin's run for this task (an MLflow ``Run``) or None; one line when it is not in the store."""
    run_id = injected_run_id()
    if run_id is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise TunaError(f"{INJECTED_RUN_ENV}={run_id} (set by KFP's MLflow plugin) is not in {uri}; point "
                        f"{TRACKING_URI_ENV} at the plugin's MLflow server or unset {INJECTED_RUN_ENV}") from None


@contextmanager
def _attached(run: Run) -> Iterator[Run]:
    """Yield a run someone else opened and will end (KFP's plugin): flushed at the end, an error recorded as the
    ``tuna.error`` tag; never terminated here."""
    try:
        yield run
    except BaseException as err:
        with contextlib.suppress(Exception):
            run.set_tags({"tuna.error": f"{type(err).__name__}: {err}".splitlines()[0]})
        raise
    finally:
        run.flush()


@contextmanager
def task_run(name: str, cfg: Recipe | None = None, parent_run_id: str | None = None) -> Iterator[Run]:
    """The run a pipeline task logs its own numbers into: the KFP plugin's run for the task when it injected one
    (tagged ``tuna.stage=name``), else :func:`stage_run` under ``parent_run_id``."""
    if _rank() == 0 and injected_run_id() is not None:
        uri, client = _open_store(cfg)
        injected = _injected(client, uri)
        with _attached(Run(client, injected.info.run_id, injected.info.experiment_id)) as run:
            run.set_tags({"tuna.stage": name, "tuna.version": __version__})
            yield run
        return
    with stage_run(name, cfg, parent_run_id) as run:
        yield run


@contextmanager
def pipeline_run(cfg: Recipe, name: str | None = None) -> Iterator[Run]:
    """Open the parent run of one pipeline run: tags, flattened recipe params and ``recipe.yaml`` (under KFP's
    MLflow plugin: write them into the plugin's run of the pipeline, which the plugin ends).

    While open, ``TUNA_MLFLOW_PARENT_RUN_ID`` and ``MLFLOW_TRACKING_URI`` are exported so stages (in this
    process or in subprocesses) nest under it. Ends FINISHED, or FAILED when the body raises.
    """
    if _rank() != 0:
        yield Run(None, None, None)
        return
    import yaml

    uri, client = _open_store(cfg)
    run_name = name or f"{cfg.run.name}-seed{cfg.run.seed}"
    tags = {"tuna.recipe": cfg.run.name, "tuna.version": __version__, "tuna.kind": "pipeline"}
    sha = _git_sha()
    if sha:
        tags.update({"tuna.git_sha": sha, "mlflow.source.git.commit": sha})
    injected = _injected(client, uri)
    if injected is not None:  # KFP's plugin: its pipeline run (the task run's parent) gets the recipe
        target = injected.data.tags.get("mlflow.parentRunId") or injected.info.run_id
        run, context = Run(client, target, injected.info.experiment_id), _attached
    else:
        exp_id = _experiment_id(client, cfg.track.experiment, artifact_location(cfg, uri), uri)
        tags["mlflow.runName"] = run_name
        run, context = Run(client, client.create_run(exp_id, tags=tags, run_name=run_name).info.run_id, exp_id), _running
    with context(run):
        run.set_tags(tags)
        run.log_params(cfg.to_dict())
        with tempfile.TemporaryDirectory(prefix="tuna-recipe-") as tmp:
            recipe = Path(tmp) / "recipe.yaml"
            recipe.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
            run.log_artifact(recipe)
        with exported_env({PARENT_RUN_ENV: str(run.run_id), TRACKING_URI_ENV: uri}):
            yield run


@contextmanager
def stage_run(name: str, cfg: Recipe | None = None, parent_run_id: str | None = None) -> Iterator[Run]:
    """Open a run for one stage, nested under ``parent_run_id``, $TUNA_MLFLOW_PARENT_RUN_ID or the KFP plugin's
    $MLFLOW_RUN_ID (the first set).

    Without a parent it is a top-level run in track.experiment (a verb run on its own). On a rank other
    than 0 the yielded run is disabled. Ends FINISHED, or FAILED when the body raises.
    """
    if _rank() != 0:
        yield Run(None, None, None)
        return
    parent_id = parent_run_id or os.environ.get(PARENT_RUN_ENV) or injected_run_id()
    uri, client = _open_store(cfg)
    tags: dict[str, str] = {"mlflow.runName": name, "tuna.stage": name, "tuna.version": __version__, "tuna.kind": "stage"}
    if cfg is not None:
        tags["tuna.recipe"] = cfg.run.name
    if parent_id:
        from mlflow.exceptions import MlflowException

        try:
            exp_id = client.get_run(parent_id).info.experiment_id
        except MlflowException:
            raise TunaError(f"parent run {parent_id!r} ({PARENT_RUN_ENV}) is not in {uri}; unset {PARENT_RUN_ENV} or "
                            f"point {TRACKING_URI_ENV} at the store holding it") from None
        tags["mlflow.parentRunId"] = parent_id
    elif cfg is not None:
        exp_id = _experiment_id(client, cfg.track.experiment, artifact_location(cfg, uri), uri)
    else:
        raise TunaError(f"stage run {name!r} has no parent ({PARENT_RUN_ENV} unset) and no recipe; pass cfg or run it "
                        f"inside pipeline_run")
    sha = _git_sha()
    if sha:
        tags.update({"tuna.git_sha": sha, "mlflow.source.git.commit": sha})
    info = client.create_run(exp_id, tags=tags, run_name=name).info
    with _running(Run(client, info.run_id, exp_id)) as run:
        yield run


# ---------------------------------------------------------------- plots

def loss_curve_png(points: Sequence[tuple[int, float]], path: str | Path, title: str = "training loss") -> Path:
    """Write a loss-vs-step PNG of ``points`` [(step, loss), ...] with matplotlib's Agg canvas (no display)."""
    if not points:
        raise ValueError("loss_curve_png got no (step, loss) points; log at least one step before plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps, losses = zip(*sorted(points))
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, losses, marker="." if len(steps) < 50 else None)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


# ---------------------------------------------------------------- registry

def register_model(run_id: str, artifact_path: str, name: str, alias: str = DEFAULT_ALIAS,
                   cfg: Recipe | None = None) -> str:
    """Register ``<run artifacts>/<artifact_path>`` as a new version of ``name`` (created if missing); set ``alias``.

    Returns the new version number (as MLflow's string).
    """
    from mlflow.exceptions import MlflowException

    uri, client = _open_store(cfg)
    try:
        artifact_uri = client.get_run(run_id).info.artifact_uri
    except MlflowException:
        raise TunaError(f"run {run_id!r} is not in {uri}; pass the id of a run in this store") from None
    if not client.list_artifacts(run_id, artifact_path):
        raise TunaError(f"run {run_id} has no artifacts at {artifact_path!r}; log the model first (Run.log_model_folder)")
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, f"{artifact_uri.rstrip('/')}/{artifact_path}", run_id=run_id,
                                          tags={"tuna.version": __version__}).version
    client.set_registered_model_alias(name, alias, version)
    return str(version)


def latest_good(name: str, alias: str = DEFAULT_ALIAS, cfg: Recipe | None = None) -> tuple[str, str]:
    """(version, source URI) of the version of registered model ``name`` that carries ``alias``."""
    from mlflow.exceptions import MlflowException

    uri, client = _open_store(cfg)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise TunaError(f"registered model {name!r} has no version with alias {alias!r} in {uri}; train and "
                        f"register one (track.register_model) or check track.registered_model") from None
    return str(mv.version), mv.source


def download(source: str, dst: str | Path, cfg: Recipe | None = None) -> Path:
    """Copy the artifacts at ``source`` (e.g. :func:`latest_good`'s URI) into folder ``dst``; returns the local path."""
    from mlflow.artifacts import download_artifacts

    uri, _ = _open_store(cfg)
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri))
