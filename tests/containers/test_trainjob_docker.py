"""The TrainJob's exact command across two containers (issue 15): the TrainJob `tuna train --launcher trainjob` renders,
run as Kubeflow Trainer's DeepSpeed (MPI) runtime runs it (tuna.train.docker_job): a launcher and a node container of
the project image on a Docker network made for the job, sshd on 2222 in the node, /etc/mpi/hostfile, the SSH keys
mounted where the runtime's Secret goes, `mpirun ... python -m tuna.train.worker ...` in the launcher, one rank per
container (gloo, CPU), the data folder shared at the same path, the stage's MLflow run nested under a pipeline run.

The node container is killed mid-stage after a checkpoint; mpirun must then exit (bounded), and the job rendered with
--resume continues onto the loss curve of an uninterrupted run, as the local kill-and-resume test checks.

The image is the recipe's ``cluster.image`` (`make test-containers` rebuilds it from this tree first);
``TUNA_TRAINJOB_IMAGE=<ref>`` runs another one (e.g. the project image with a development tree's package on top).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import SMOKE
from tuna.images import ImageError, docker_engine, image_exists
from tuna.recipe import load_recipe
from tuna.train import docker_job

pytestmark = pytest.mark.containers
IMAGE = os.environ.get("TUNA_TRAINJOB_IMAGE") or load_recipe(SMOKE).cluster.image
STEPS, EVERY = 64, 8  # ~0.06 s a step here: the kill window after the first checkpoint must outlast `docker kill`
STAGE = ["train.stage1.epochs=20", f"train.stage1.max_steps={STEPS}", f"train.checkpoint_every={EVERY}",
         "train.keep_checkpoints=10"]
TWO_CONTAINERS = ["cluster.num_nodes=2", "train.ranks=1", f"cluster.image={IMAGE}"]  # 2 pods x 1 rank (slots=1)
KILL_EXIT_LIMIT = 120.0  # seconds mpirun may take to notice the lost node and exit


@pytest.fixture(scope="module")
def project() -> str:
    try:
        docker_engine()
    except ImageError as err:
        pytest.skip(str(err))
    if not image_exists(IMAGE):
        pytest.skip(f"no image {IMAGE} in the Docker engine; build it with `make image` (make test-containers does)")
    return IMAGE


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()] if path.is_file() else []


def _pod_writable(path: Path) -> None:
    """The containers run as uid 1000 (the chart's fsGroup would make the PVC theirs): let them write the copy."""
    subprocess.run(["chmod", "-R", "a+rwX", str(path)], check=True)


@dataclass
class Outcome:
    data: Path
    reference: list[float]
    killed_at: int
    finished_when_killed: bool
    kill_exit: int
    kill_seconds: float
    killed_log: list[str]
    resumed_log: list[str]
    resumed_rc: int
    parent_run_id: str
    seconds: dict[str, float]
    names: list[str]


@pytest.fixture(scope="module")
def outcome(project: str, prepared: Any, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    from tuna import track

    data = tmp_path_factory.mktemp("trainjob-docker") / "data"
    shutil.copytree(prepared.cfg.data_dir, data, ignore=lambda d, names: [n for n in names if Path(d) ==
                    prepared.cfg.data_dir and n in ("train", "mlflow")])  # the prepared inputs only
    overrides = [f"run.data_dir={data}", *STAGE]
    log = data / "train/tuna/stage1/loss.jsonl"
    seconds: dict[str, float] = {}

    # The reference: the same stage uninterrupted on 2 local DeepSpeed ranks (world size 2 as in the containers).
    t0 = time.monotonic()
    local = subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "1",
                            "--variant", "tuna", *overrides], capture_output=True, text=True, timeout=900)
    seconds["local reference"] = time.monotonic() - t0
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    reference = _losses(log)
    assert len(reference) == STEPS
    shutil.rmtree(log.parent)

    tag = uuid.uuid4().hex[:6]
    overrides += TWO_CONTAINERS
    cfg = load_recipe(SMOKE, overrides)
    names: list[str] = []
    with track.pipeline_run(cfg, name="trainjob-docker") as parent:
        _pod_writable(data)
        parent_id = os.environ[track.PARENT_RUN_ENV]  # what cluster.launch forwards into the rendered TrainJob
        assert parent_id == parent.run_id
        obj, runtime, files = docker_job.stage_job(SMOKE, 1, "tuna", overrides, parent_run_id=parent_id, name=f"tj-{tag}")
        names.append(obj["metadata"]["name"])
        killed_log: list[str] = []
        t0 = time.monotonic()
        with docker_job.running(obj, runtime, files=files, log=killed_log.append) as job:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and job.state(job.launcher.name) == "running":
                if len(_losses(log)) > EVERY and (log.parent / "checkpoints/latest").is_file():
                    break
                time.sleep(0.05)
            assert job.state(job.launcher.name) == "running", "\n".join(killed_log[-40:])
            t_kill = time.monotonic()
            job.kill("node")  # SIGKILL: `docker kill` returns once the container is gone
            kill_exit = job.wait(KILL_EXIT_LIMIT)  # raises when mpirun hangs on the lost node
            kill_seconds = time.monotonic() - t_kill
        seconds["killed run"] = time.monotonic() - t0
        killed_at = len(_losses(log))
        finished_when_killed = (log.parent / "metrics.json").exists()

        _pod_writable(data)
        obj, runtime, files = docker_job.stage_job(SMOKE, 1, "tuna", overrides, resume=True, parent_run_id=parent_id,
                                                   name=f"tj-{tag}-resume")
        names.append(obj["metadata"]["name"])
        resumed_log: list[str] = []
        t0 = time.monotonic()
        with docker_job.running(obj, runtime, files=files, log=resumed_log.append) as job:
            resumed_rc = job.wait(900)
        seconds["resumed run"] = time.monotonic() - t0
    print(f"\nTrainJob in Docker, smoke stage 1 ({STEPS} steps, 2 containers x 1 rank): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f"; mpirun exited {kill_seconds:.1f} s after the "
          f"node was killed (exit code {kill_exit}) at step {killed_at}")
    return Outcome(data, reference, killed_at, finished_when_killed, kill_exit, kill_seconds, killed_log, resumed_log, resumed_rc, parent_id,
                   seconds, names)


def test_killing_the_node_ends_mpirun(outcome: Outcome) -> None:
    assert outcome.kill_exit != 0 and outcome.kill_seconds < KILL_EXIT_LIMIT
    assert EVERY < outcome.killed_at < STEPS
    assert not outcome.finished_when_killed


def test_the_resumed_job_continues_onto_the_uninterrupted_loss_curve(outcome: Outcome) -> None:
    text = "\n".join(outcome.resumed_log)
    assert outcome.resumed_rc == 0, text[-3000:]
    at = re.search(rf"resumed tuna stage 1 at step (\d+)/{STEPS}", text)
    assert at and int(at.group(1)) % EVERY == 0 and EVERY <= int(at.group(1)) <= outcome.killed_at, text[-3000:]
    stage = outcome.data / "train/tuna/stage1"
    assert _losses(stage / "loss.jsonl") == pytest.approx(outcome.reference, abs=1e-5)
    metrics = json.loads((stage / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["steps"], metrics["resumed_from"]) == (2, STEPS, int(at.group(1)))


def test_both_ranks_wrote_the_checkpoint_on_the_shared_folder(outcome: Outcome) -> None:
    """Rank 1 runs in the node container: its ZeRO shard next to rank 0's proves it wrote the host's folder."""
    ckpt = outcome.data / "train/tuna/stage1/checkpoints"
    last = (ckpt / "latest").read_text().strip()
    assert last == f"step-{STEPS:06d}"
    shards = sorted(p.name for p in (ckpt / last).glob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (outcome.data / "train/tuna/stage1/model/config.json").is_file()


def test_the_stage_runs_nest_under_the_pipeline_run(outcome: Outcome) -> None:
    from mlflow.tracking import MlflowClient

    from tuna.track import tracking_uri

    client = MlflowClient(tracking_uri(load_recipe(SMOKE, [f"run.data_dir={outcome.data}"])))
    parent = client.get_run(outcome.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert [r.info.run_name for r in runs] == ["train-tuna-stage1"] * 2  # the killed job's run and the resumed one's
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert len(done) == 1 and done[0].data.params["world_size"] == "2"
    start = json.loads((outcome.data / "train/tuna/stage1/metrics.json").read_text())["resumed_from"]
    assert [m.step for m in client.get_metric_history(done[0].info.run_id, "loss")] == list(range(start + 1, STEPS + 1))


def test_containers_and_networks_are_gone(outcome: Outcome) -> None:
    for name in outcome.names:
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={docker_job.LABEL}={name}"], capture_output=True,
                              text=True, timeout=60)
        assert left.stdout.strip() == ""
        assert subprocess.run(["docker", "network", "inspect", f"{name}-net"], capture_output=True,
                              timeout=60).returncode != 0


def test_a_missing_image_fails_in_one_line_and_leaves_nothing(project: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _pod_writable(data)
    obj, runtime, files = docker_job.stage_job(SMOKE, 1, "tuna", [f"run.data_dir={data}", *TWO_CONTAINERS,
                                                                  "cluster.image=tuna-absent:0"], name="tj-absent")
    with pytest.raises(docker_job.DockerJobError) as err, docker_job.running(obj, runtime, files=files):
        pass
    assert "\n" not in str(err.value) and "no image tuna-absent:0" in str(err.value) and "make image" in str(err.value)
    assert subprocess.run(["docker", "network", "inspect", "tj-absent-net"], capture_output=True, timeout=60).returncode != 0
