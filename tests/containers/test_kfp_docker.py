"""The pipeline in kfp.local's DockerRunner (issue 15, item 2): every task of the smoke pipeline in a container of the
project image, as the image's own non-root user (what a cluster pod runs), checked as the SubprocessRunner run is
(tests/pipeline/test_pipeline_local.py): each task's artifacts and parameters, the MLflow parent and nested runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import SMOKE, check_smoke_pipeline_run
from tuna.kfp.docker_local import IMAGE_USER, ROOT_LABEL
from tuna.kfp.local import run_local
from tuna.kfp.options import PipelineError

pytestmark = pytest.mark.containers


@pytest.fixture()
def image_user_dir() -> Iterator[Path]:
    """An empty data folder the image's user (uid 1000) owns, on a path it can reach (pytest's tmp_path is 0700
    root's); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tuna-kfp-docker-", dir="/tmp"))
    os.chmod(path, 0o755)
    os.chown(path, 1000, 1000)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _containers(root: Path) -> list[str]:
    """Containers (running or not) that kfp.local started for the run under pipeline root ``root``."""
    done = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={ROOT_LABEL}={root}"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_smoke_pipeline_runs_in_the_project_image(project: str, image_user_dir: Path) -> None:
    out = run_local(SMOKE, [f"run.data_dir={image_user_dir}"], runner="docker", docker_user=IMAGE_USER)
    check_smoke_pipeline_run(out, image_user_dir)
    owners = {p.stat().st_uid for p in (image_user_dir / "train").rglob("*")}
    assert owners == {1000}, owners  # written by the image's user, inside the containers
    assert _containers(image_user_dir / "kfp") == []  # each task's container is removed once its status is read


def test_a_missing_image_is_one_line_naming_the_build_command(engine: str, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        run_local(SMOKE, [f"run.data_dir={tmp_path}", "cluster.image=tuna-test:absent"], runner="docker")
    assert str(info.value) == (f"--docker: no image tuna-test:absent (cluster.image) in the Docker engine; build it "
                               f"with `tuna image --config {SMOKE}` (or `make image`)")
    assert not (tmp_path / "world").exists()


def test_a_failing_task_in_a_container_reports_its_one_line_error(project: str, image_user_dir: Path) -> None:
    with pytest.raises(PipelineError) as info:
        run_local(SMOKE, [f"run.data_dir={image_user_dir}"], runner="docker", docker_user=IMAGE_USER,
                  params={"serve_datastore": "C"})
    assert str(info.value) == ("kfp.local: validate: error: pipeline parameter serve_datastore: unknown datastore 'C'; "
                               "the recipe declares A, B, A_captions")


def _kill_when_running(root: Path, task: str, after_s: float, stop: threading.Event, killed: list[str]) -> None:
    """Kill the container of ``task`` (found by its executor output path) ``after_s`` seconds after it started."""
    while not stop.is_set():
        for cid in _containers(root):
            args = subprocess.run(["docker", "inspect", "--format", "{{json .Args}}", cid], capture_output=True,
                                  text=True, timeout=60).stdout
            if f"/{task}/executor_output.json" in args:
                stop.wait(after_s)
                subprocess.run(["docker", "kill", cid], capture_output=True, timeout=60)
                killed.append(cid)
                return
        stop.wait(0.5)


def test_a_container_killed_mid_task_fails_it_with_its_last_log_lines(project: str, image_user_dir: Path) -> None:
    from tuna.layout import layout
    from tuna.recipe import load_recipe

    root, stop, killed = image_user_dir / "kfp", threading.Event(), []
    # "train" = the first training task (tuna stage 1, ~15 s in a container): killed 6 s in, among its ranks' steps
    killer = threading.Thread(target=_kill_when_running, args=(root, "train", 6.0, stop, killed), daemon=True)
    killer.start()
    try:
        with pytest.raises(PipelineError) as info:
            run_local(SMOKE, [f"run.data_dir={image_user_dir}"], runner="docker", docker_user=IMAGE_USER)
    finally:
        stop.set()
        killer.join(60)
    text = str(info.value)
    assert killed and "\n" not in text, text
    head = ("kfp.local: train: container exited with status 137 (killed: docker kill, or out of memory); its last log "
            "lines: ")
    assert text.startswith(head) and text != head + "(none)", text
    (run,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]  # not .kfp-cache
    assert not (run / "train" / "executor_output.json").exists()   # no output recorded for the killed task
    stage = layout(load_recipe(SMOKE, [f"run.data_dir={image_user_dir}"])).stage("tuna", 1)
    assert not (stage / "metrics.json").exists() and not (stage / "model").exists()  # no half-written model
    assert _containers(root) == []
