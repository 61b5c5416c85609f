"""Launch a training stage: locally with the ``deepspeed`` launcher (N ranks on this machine).

The recipe the ranks read is the resolved config written to ``<data_dir>/train/recipes/``, so the
ranks see exactly what the caller validated (overrides included). Cluster launches (TrainJob,
PyTorchJob) are rendered and submitted by :mod:`tuna.train.cluster` and run the same worker module.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tuna.errors import TrainError
from tuna.layout import layout
from tuna.recipe import Recipe
from tuna.variants import variant_model

WORKER = "tuna.train.worker"
# DeepSpeed launcher chatter that says nothing to a user (shown with TUNA_DEBUG=1).
_NOISE = re.compile(r"\[(real_accelerator|launch|runner|constants|comm|config_utils|engine|logging)\.py:\d+|"
                    r"^\s*(\[WARNING\]|\[INFO\]|Using /|Emitting ninja|Building extension|Loading extension)|"
                    r"^Warning: Permanently added .* to the list of known hosts")  # ssh from mpirun (TrainJob in Docker)


def is_noise(line: str) -> bool:
    """A launcher line that says nothing to a user (DeepSpeed's INFO/WARNING chatter, ssh's known-hosts notice)."""
    return _NOISE.search(line) is not None


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_ranks(cfg: Recipe) -> None:
    """Refuse a local run asking for more ranks than GPUs or cores, or a GPU recipe on a machine without GPUs (one
    line naming the setting)."""
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        if cfg.train.ranks > n:
            raise TrainError(f"train.ranks={cfg.train.ranks} but this machine has {n} GPUs; lower train.ranks")
        return
    if cfg.cluster.gpus_per_node > 0:
        raise TrainError(f"{cfg.run.name}: cluster.gpus_per_node={cfg.cluster.gpus_per_node} asks for GPU nodes but this "
                         f"machine has no CUDA GPU; submit it to a cluster (--launcher trainjob) or train a CPU recipe "
                         f"(configs/smoke.yaml, configs/mini.yaml)")
    cores = available_cores()
    if cfg.train.ranks > cores:
        raise TrainError(f"train.ranks={cfg.train.ranks} asks for more CPU ranks than the {cores} cores here; "
                         f"set train.ranks <= {cores}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_recipe(cfg: Recipe, variant: str, stage: int | str) -> Path:
    """Write the resolved recipe the ranks load; returns its path."""
    path = layout(cfg).stage_recipe(variant, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def local_command(recipe: Path, stage: int | str, variant: str, ranks: int, resume: bool, port: int) -> list[str]:
    """DeepSpeed's per-node launcher (``deepspeed.launcher.launch``, what the ``deepspeed`` command runs for local
    resources) starting ``ranks`` local ranks of the worker module. Called directly, not through the ``deepspeed``
    runner: the runner only encodes this world and starts the same launcher, and its own import of DeepSpeed cost
    ~2 s per launch; the launcher also forwards a SIGTERM to the ranks, which the runner does not on one node."""
    world = base64.urlsafe_b64encode(json.dumps({"localhost": list(range(ranks))}).encode()).decode()
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "--module", "--log_level=info", WORKER, "--config", str(recipe), "--stage", str(stage),
           "--variant", variant]
    return cmd + (["--resume"] if resume else [])


def check_checkpoints(cfg: Recipe, where: str = "") -> bool:
    """Read the configs (no weights) of the checkpoints TUNA starts from and check they fit together (today: the
    ``model.llava`` + ``model.vision_tower`` pair); one line naming the key and the fix. ``where`` = "cluster":
    paths that are not on this machine (a pod's PVC paths) are left to the pipeline's validate task; returns whether
    the check ran."""
    if not cfg.model.llava:
        return False
    from tuna.layout import encoder_path
    from tuna.model.from_llava import check_llava_pair

    clip = encoder_path(cfg)
    if where == "cluster" and not (Path(cfg.model.llava).exists() and Path(clip).exists()):
        return False
    check_llava_pair(cfg.model.llava, clip)
    return True


def launch_local(cfg: Recipe, stage: int | str, variant: str = "tuna", resume: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``stage`` (1, 2 or "all": both in one launch) of ``variant`` on ``train.ranks`` local ranks;
    returns the last stage's metrics.json."""
    if stage not in (1, 2, "all"):
        raise TrainError(f"stage must be 1, 2 or 'all', got {stage!r}")
    variant_model(cfg, variant)  # unknown variant: fail before starting processes
    check_ranks(cfg)
    if stage in (1, "all"):  # a bad LLaVA/CLIP pair: one line here, not a traceback per rank
        check_checkpoints(cfg)
    from tuna.datacheck import preflight
    from tuna.sources import sources
    from tuna.train.freshness import DATA_SOURCES, init_variant, is_up_to_date

    start = init_variant(cfg, variant)
    if start and not is_up_to_date(cfg, start, 2):
        raise TrainError(f"train.stage2.init_from={start} starts the stage 2 of {variant!r} from {start}'s finished "
                         f"stage-2 model, which is missing or stale; run `tuna train --variant {start}` first, or set "
                         f"train.stage2.init_from=null")

    src = sources(cfg)
    preflight([src[DATA_SOURCES[s]] for s in ((1, 2) if stage == "all" else (int(stage),))])   # before any rank starts
    recipe = write_recipe(cfg, variant, stage)
    cmd = local_command(recipe, stage, variant, cfg.train.ranks, resume, free_port())
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.train.threads_per_rank), PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    verbose = bool(os.environ.get("TUNA_DEBUG"))
    # Same process group as the caller: Ctrl-C or a kill of the group reaches the launcher and every rank.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if verbose or not is_noise(line):
                log(line.rstrip("\n"))
        rc = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    if rc != 0:
        raise TrainError(f"training stage {stage} of {variant!r} failed (launcher exit code {rc}); the rank's error is "
                         f"printed above; fix it and rerun with --resume to continue from the last checkpoint")
    metrics = layout(cfg).stage(variant, 2 if stage == "all" else stage) / "metrics.json"
    return json.loads(metrics.read_text())


def _stop(proc: subprocess.Popen) -> None:
    """Stop the launcher (it stops its ranks) and wait; kill it if it does not go within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


__all__ = ["available_cores", "check_ranks", "is_noise", "launch_local", "local_command", "write_recipe"]
