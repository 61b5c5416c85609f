"""The CUDA project image (`make image-cuda`: the GPU recipe's cluster.image with PyPI's torch, the cu130 build) on a
machine without a GPU: torch is the CUDA build its label names (CUDA 13.0, no device here), DeepSpeed and tuna import,
and the TrainJob's exact command (tuna.train.docker_job: launcher + node container, mpirun, sshd, gloo ranks) trains a
smoke stage on CPU in two containers of it onto the loss curve of the same stage run locally with CPU torch.

Not built by `make test-containers` (a 7.5 GB image): every test skips in one line without it.
``TUNA_CUDA_IMAGE=<ref>`` checks another tag (default: the Makefile's CUDA_IMAGE; the `cuda_image` fixture, conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from support import SMOKE
from tuna.images import TORCH_LABEL, torch_version
from tuna.train import docker_job

pytestmark = pytest.mark.containers
VARIANT, CUDA = "cu130", "13.0"   # PyPI's torch 2.13.0 (tuna.images.PYPI_TORCH_VARIANT)
STEPS = 16
STAGE = ["train.stage1.epochs=20", f"train.stage1.max_steps={STEPS}", f"train.checkpoint_every={STEPS}"]


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def test_the_image_holds_the_cuda_torch_its_label_names_and_imports_deepspeed_and_tuna(cuda_image: str) -> None:
    probe = ("import json, torch, deepspeed, tuna; print(json.dumps([torch.__version__, torch.version.cuda, "
             "torch.cuda.is_available(), torch.backends.cudnn.version(), deepspeed.__version__, tuna.__version__]))")
    done = _docker("run", "--rm", "--network", "host", cuda_image, "python", "-c", probe)
    assert done.returncode == 0, done.stdout + done.stderr
    version, cuda, available, cudnn, _, _ = json.loads(done.stdout.strip().splitlines()[-1])
    assert (version, cuda, available) == (f"{torch_version()}+{VARIANT}", CUDA, False)  # no GPU on this machine
    assert cudnn  # the nvidia-cudnn wheel loads without a device
    label = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{TORCH_LABEL}"}}}}', cuda_image)
    assert label.stdout.strip() == f"{torch_version()}+{VARIANT}"
    tools = _docker("run", "--rm", "--network", "none", "--entrypoint", "sh", cuda_image, "-c",
                    "id -u; mpirun --version | head -1; command -v sshd; python -c 'import mpi4py'")
    assert tools.returncode == 0 and tools.stdout.split()[0] == "1000" and "Open MPI" in tools.stdout, tools.stdout + tools.stderr


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()] if path.is_file() else []


def test_the_trainjob_command_trains_a_smoke_stage_on_cpu_in_two_containers(cuda_image: str, prepared: Any,
                                                                             tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(prepared.cfg.data_dir, data, ignore=lambda d, names: [n for n in names if Path(d) ==
                    prepared.cfg.data_dir and n in ("train", "mlflow")])  # the prepared inputs only
    overrides = [f"run.data_dir={data}", *STAGE]
    log = data / "train/tuna/stage1/loss.jsonl"
    t0 = time.monotonic()
    local = subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "1", "--variant", "tuna",
                            *overrides], capture_output=True, text=True, timeout=900)
    seconds = {"local CPU torch": time.monotonic() - t0}
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    reference = _losses(log)
    assert len(reference) == STEPS
    shutil.rmtree(log.parent)

    subprocess.run(["chmod", "-R", "a+rwX", str(data)], check=True)  # the containers run as uid 1000
    name = f"tj-cuda-{uuid.uuid4().hex[:6]}"
    obj, runtime, files = docker_job.stage_job(SMOKE, 1, "tuna", [*overrides, "cluster.num_nodes=2", "train.ranks=1",
                                                                   f"cluster.image={cuda_image}"], name=name)
    assert obj["spec"]["trainer"]["image"] == cuda_image
    lines: list[str] = []
    t0 = time.monotonic()
    with docker_job.running(obj, runtime, files=files, log=lines.append) as job:
        rc = job.wait(900)
    seconds["2 containers of the CUDA image"] = time.monotonic() - t0
    text = "\n".join(lines)
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    losses = _losses(log)
    gap = max((abs(a - b) for a, b in zip(losses, reference, strict=False)), default=float("nan"))
    print("\nCUDA image, smoke stage 1 on CPU: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f"; largest loss difference from CPU torch {gap:.2e} over {len(losses)} steps")
    metrics = json.loads((log.parent / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["steps"]) == (2, STEPS)
    assert losses == pytest.approx(reference, abs=1e-5)  # CUDA torch on CPU: the CPU build's curve (identical here)
    left = _docker("ps", "-aq", "--filter", f"label={docker_job.LABEL}={name}", timeout=60)
    assert left.stdout.strip() == ""
