"""Run the pipeline on this machine (``tuna pipeline run --local``) through ``kfp.local``: the same components, DAG and
IR as a cluster run, with ``target="local"``; and the progress view of its output. Two runners:

* ``subprocess`` (default): ``kfp.local.SubprocessRunner`` in this venv;
* ``docker`` (``--docker``): ``kfp.local.DockerRunner``, each task in a container of the project image
  (``cluster.image``, built by ``tuna image``), the image and the component command a cluster pod runs. The data
  folder, the recipe's folder and the recipe's own data sources are bind-mounted at their host paths (data
  read-write, the rest read-only); containers use the host network; the Secrets' env vars a cluster would inject
  (MLflow, S3, Milvus) are forwarded when set here.

kfp.local ignores the Kubernetes platform spec (no PVCs, Secrets, node selectors or accelerators), so the default
build runs (local launcher, whatever the recipe's ``cluster:`` section says): ``run.data_dir`` is this machine's
folder, training runs on local DeepSpeed ranks and ``deploy`` runs the local tritonserver demo.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tuna.kfp.compile import build_pipeline
from tuna.kfp.docker_local import docker_runner, task_container_fixes
from tuna.kfp.options import ERROR_FILE_ENV, PipelineError, PipelineOptions, _first_line
from tuna.layout import layout
from tuna.recipe import ClusterConfig, load_recipe

RUNNERS = ("subprocess", "docker")


class _ProgressLog(io.TextIOBase):
    """kfp.local's output: every line to ``log``; task starts/ends, task errors and our step lines to ``screen``,
    and a long task's progress lines ("epoch 3/20", "step 40/400") at most one per ``every_s`` seconds (always
    the first of a task), indented under it."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")
    _SHOW = re.compile(r"Executing task|finished with status|Pipeline '.*' finished|: error: |asked '|provenance: "
                       r"|tritonserver ready|served from kfp.local's cache")

    _PROGRESS = re.compile(r"\b(epoch|step) \d+/\d+\b")
    _START = re.compile(r"Executing task '([^']+)'")
    _END = re.compile(r"Task '([^']+)' finished with status")

    def __init__(self, log: TextIO, screen: TextIO, every_s: float = 30.0) -> None:
        self.log, self.screen, self._buf, self.every_s = log, screen, "", every_s
        self._started: dict[str, float] = {}
        self._last_progress: float | None = None

    def write(self, text: str) -> int:
        self.log.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            clean = self._ANSI.sub("", line).strip()
            if self._PROGRESS.search(clean) and not self._SHOW.search(clean):
                now = time.perf_counter()
                if self._last_progress is None or now - self._last_progress >= self.every_s:
                    self._last_progress = now
                    self.screen.write(f"  {clean.split(' - INFO - ')[-1]}\n")
                    self.screen.flush()
                continue
            if self._SHOW.search(clean):
                shown = clean.split(" - INFO - ")[-1]
                if (m := self._START.search(shown)):
                    self._started[m.group(1)] = time.perf_counter()
                    self._last_progress = None
                elif (m := self._END.search(shown)) and m.group(1) in self._started:
                    shown += f" ({time.perf_counter() - self._started.pop(m.group(1)):.1f} s)"
                self.screen.write(shown + "\n")
                self.screen.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()


class _CacheHits(logging.Handler):
    """Collects (and prints, for the progress view) the tasks kfp.local served from its cache; it reports them
    only as INFO records of the root logger ("Task <name> cache hit ...")."""

    _HIT = re.compile(r"^Task (\S+) cache hit ")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.tasks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if (m := self._HIT.match(record.getMessage())):
            self.tasks.append(m.group(1))
            print(f"Task '{m.group(1)}' served from kfp.local's cache")


@contextlib.contextmanager
def _cache_hits() -> Iterator[_CacheHits]:
    root = logging.getLogger()
    handler, level = _CacheHits(), root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def run_local(config: str | Path, overrides: Sequence[str] = (), pipeline_root: str | Path | None = None,
              params: Mapping[str, Any] | None = None, verbose: bool = True, runner: str = "subprocess",
              docker_user: str | None = None, cache: bool = True) -> dict[str, Any]:
    """Run the pipeline on this machine through ``kfp.local``: ``runner="subprocess"`` (``SubprocessRunner``,
    this venv) or ``"docker"`` (``DockerRunner``, every task in the project image as user ``docker_user``,
    default the caller's uid:gid; see :mod:`tuna.kfp.docker_local`). With ``cache`` (default) kfp.local's cache
    serves the data tasks (world, encoder, mine-tags, the indexes, lm) whose recipe content, declared sources and
    upstream artifacts are unchanged since an earlier run under the same pipeline root.

    The same IR as :func:`tuna.kfp.compile.compile_pipeline` (default build: local launcher, no accelerators) with
    ``target="local"`` and ``deploy_target="local"``; ``run.data_dir`` is made absolute (the tasks are
    subprocesses). Task outputs go to ``<pipeline_root>/<tuna-timestamp>/<task>/`` (default root
    ``<data_dir>/kfp``). A failing task raises PipelineError with that task's one-line error. With ``verbose`` False, kfp.local's output goes to
    ``<run root>/pipeline-<time>.log`` and the screen shows task progress and the serving answer only.
    """
    from kfp import local

    if runner not in RUNNERS:
        raise PipelineError(f"runner: {runner!r} is not one of {', '.join(RUNNERS)}")
    cfg = load_recipe(config, overrides)  # a bad recipe or override fails here, before kfp starts anything
    data_dir = cfg.data_dir.resolve()
    resolved = [o for o in overrides if not o.strip().startswith("run.data_dir=")] + [f"run.data_dir={data_dir}"]
    root = Path(pipeline_root).resolve() if pipeline_root else layout(cfg).kfp.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":  # tasks leave their one-line error where the containers can write: the pipeline root
        error_file = root / ".task-error"  # a stable name: the containers' env is part of kfp.local's cache key
        task_runner = docker_runner(cfg, Path(config), root, error_file, docker_user)  # checks engine, image, user
        error_file.write_text("", encoding="utf-8")
        error_file.chmod(0o666)
        # the default (local-launcher) build with the recipe's image: the containers the cluster's pods run
        options = PipelineOptions.of(cfg, cluster=ClusterConfig(image=cfg.cluster.image))
    else:
        error_file = Path(tempfile.mkstemp(prefix="tuna-task-error-")[1])
        task_runner, options = local.SubprocessRunner(use_venv=False), PipelineOptions.of(cfg, cluster=ClusterConfig())
    pipeline = build_pipeline(options)
    # kfp.local's cache (the data tasks the pipeline marks cacheable) lives under the pipeline root: deleting the
    # data folder (which holds the default root) empties it too
    local.init(runner=task_runner, pipeline_root=str(root), raise_on_error=True, enable_caching=cache,
               cache_root=str(root / ".kfp-cache"))
    args = {"config": str(Path(config).resolve()), "overrides": resolved, "target": "local", "deploy_target": "local",
            **(params or {})}
    before = {p.name for p in root.iterdir()}
    # the tasks (subprocesses of this one) print their step lines as they go, not when they exit
    task_env = {ERROR_FILE_ENV: str(error_file), "PYTHONUNBUFFERED": "1"}
    old = {k: os.environ.get(k) for k in task_env}
    os.environ.update(task_env)
    t0 = time.perf_counter()
    log_path = root / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            if runner == "docker":
                stack.enter_context(task_container_fixes(task_runner))
            if not verbose:
                log = stack.enter_context(open(log_path, "w", encoding="utf-8"))
                stack.enter_context(contextlib.redirect_stdout(_ProgressLog(log, sys.stdout)))
                print(f"kfp.local log: {log_path}", file=sys.stderr)
            hits = stack.enter_context(_cache_hits())
            pipeline(**args)
    except RuntimeError as err:
        detail = error_file.read_text(encoding="utf-8").strip() if error_file.is_file() else ""
        raise PipelineError(f"kfp.local: {detail or _first_line(err)}") from None
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        error_file.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    new = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in before), key=lambda p: p.stat().st_mtime)
    run_dir = new[-1] if new else root
    return {"pipeline_root": str(root), "run_dir": str(run_dir), "seconds": seconds, "data_dir": str(data_dir),
            "tasks": sorted(p.name for p in run_dir.iterdir() if p.is_dir()), "cached": sorted(hits.tasks),
            "log": None if verbose else str(log_path)}


__all__ = ["RUNNERS", "run_local"]
