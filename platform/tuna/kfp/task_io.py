"""The task side of a KFP component: one-line errors (:func:`task`), a step's result published into its KFP
artifacts (:class:`TaskResult`, :func:`publish`), and the helpers every task adapter shares (the recipe with the
resolved overrides, ``pvc://`` URIs, provenance, metric names, nested MLflow runs). Package-internal helpers keep
their leading underscore; ``tuna.kfp.tasks`` is what the components call.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuna import __version__
from tuna.errors import TunaError
from tuna.kfp.options import ERROR_FILE_ENV, PipelineError
from tuna.recipe import Recipe, load_recipe

if TYPE_CHECKING:
    from tuna.track import Run


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
    """The task's MLflow run: KFP's plugin run for the task when it injected one, else a run nested under the
    pipeline's parent run (top-level when ``parent`` is empty)."""
    from tuna import track

    with track.task_run(name, cfg, parent_run_id=parent or None) as run:
        run.set_tags({"tuna.front_door": "kfp"})
        yield run


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _data_dir_override(cfg: Recipe, data_root: str) -> list[str]:
    """On a cluster a relative run.data_dir lands on the data PVC (as `tuna train --launcher trainjob` does)."""
    if data_root and not cfg.run.data_dir.startswith("/"):
        return [f"run.data_dir={posixpath.join(data_root, cfg.run.data_dir)}"]
    return []
