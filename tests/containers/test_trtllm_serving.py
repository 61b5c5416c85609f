"""The TensorRT-LLM serving image (docker/serving-trtllm.Dockerfile: tuna added to NGC's Triton + TensorRT-LLM image
without changing it; the chart's gpu-trtllm scenario). Here it is built FROM the stand-in of that image (`make
image-serving-trtllm-standin`: Python 3.12, PyPI's torch 2.9.0 and transformers 4.57.1 as TensorRT-LLM pins them,
tritonserver with the 3.12 python stub; no TensorRT-LLM, no GPU), and checked as far as that goes:

- the base's Python, torch and transformers are what the engine side sees; the python steps see transformers 5 from
  /opt/tuna-steps; both halves of tuna import where they run;
- `docker run` of it serves a serve.engine=hf export over gRPC with the in-process greedy answers and provenance: the
  preprocessing, retrieval and postprocessing steps (and the hf LLM step) on the NGC image's Python;
- a `tuna export --trtllm` repository on an image without TensorRT-LLM: the three python steps load, the tensorrt_llm
  step refuses in one line naming the image to use, and tritonserver exits for the orchestrator;
- ``gpu``: on a GPU machine with the image built FROM NGC, the trtllm repository answers with provenance.

Not built by `make test-containers` (~9 GB): every test skips in one line without the image (conftest.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import support
from support import FLUENT, HEAD32, SMOKE, World
from tuna.images import image_engines
from tuna.recipe import load_recipe

pytestmark = pytest.mark.containers
MAX_TOKENS = 8
STEPS = ("preprocessing", "retrieval", "postprocessing")


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _label(image: str, key: str) -> str:
    return _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{key}"}}}}', image).stdout.strip()


def _versions(image: str, *env: str) -> dict[str, str]:
    """python / torch / transformers / tensorrt_llm as the image's python3 sees them (``env``: extra -e settings)."""
    code = ("import importlib.util as u, sys, torch, transformers; "
            "print('python=' + '.'.join(map(str, sys.version_info[:2])), 'torch=' + torch.__version__, "
            "'transformers=' + transformers.__version__, 'trtllm=' + str(u.find_spec('tensorrt_llm') is not None))")
    done = _docker("run", "--rm", "--network", "none", *env, "--entrypoint", "python3", image, "-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(kv.split("=", 1) for kv in done.stdout.split())


def test_the_base_stays_as_it_was_and_the_steps_get_their_own_transformers(trtllm_serving: str) -> None:
    base = _label(trtllm_serving, "tuna.base")
    assert image_engines(trtllm_serving) == ("hf", "trtllm") and base, base
    engine_side = _versions(trtllm_serving)
    if shutil.which("docker") and _docker("image", "inspect", base).returncode == 0:
        assert engine_side == _versions(base), (engine_side, base)     # nothing of the base changed
    assert engine_side["python"] in ("3.11", "3.12"), engine_side
    steps_side = _versions(trtllm_serving, "-e", "PYTHONPATH=/opt/tuna-steps/site")
    assert steps_side["transformers"].startswith("5.23.") and steps_side["torch"] == engine_side["torch"], steps_side
    imports = ("import sys, os; sys.path[:0] = [os.environ['TUNA_SOURCE_ROOT']]; import tuna.serve.trtllm_engine; "
               "sys.path[:0] = [os.environ['TUNA_STEPS_PATH']]; import tuna.serve.ensemble, tuna.model; print('ok')")
    done = _docker("run", "--rm", "--network", "none", "--entrypoint", "python3", trtllm_serving, "-c", imports)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _export(world: World, out: Path, trtllm: bool = False) -> Path:
    from tuna.serve.export import export_repository

    cfg = load_recipe(SMOKE, [f"run.data_dir={world.cfg.data_dir}", *HEAD32, *FLUENT, "serve.engine=hf"])
    export_repository(cfg, "tuna", out=out, trtllm=trtllm, log=lambda s: None)
    return out / "trtllm" / "model_repository" if trtllm else out / "model_repository"


# As the chart's gpu-trtllm scenario runs the image: NGC's entrypoint in front, uid 1000, the python backend's shm size.
AS_THE_CHART = ("--user", "1000:1000")
SERVER_ARGS = ("--backend-config=python,shm-default-byte-size=33554432",)


def _run(image: str, repository: Path, *extra: str) -> tuple[str, str]:
    return support.run_serving_container(image, repository, "tuna-serving-trtllm", *AS_THE_CHART, *extra, server_args=SERVER_ARGS)


@pytest.fixture(scope="module")
def hf_served(trtllm_serving: str, trained_fluent: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list, list, list]]:
    """The hf export served by the TensorRT-LLM serving image on this CPU machine: (gRPC URL, questions, greedy answers,
    provenance)."""
    repository = _export(trained_fluent, tmp_path_factory.mktemp("served-trtllm-hf") / "tuna")
    with support.served_like_in_process(trtllm_serving, trained_fluent, repository, MAX_TOKENS, "tuna-serving-trtllm", *AS_THE_CHART,
                                server_args=SERVER_ARGS) as served:
        yield served


def test_the_python_steps_serve_on_the_bases_python_like_the_in_process_model(hf_served: tuple) -> None:
    url, asked, expected, provenance = hf_served
    support.check_like_in_process(support.ask_all(url, asked, MAX_TOKENS), expected, provenance)


def test_a_trtllm_export_without_tensorrt_llm_loads_the_python_steps_refuses_in_one_line_and_exits(
        trtllm_serving: str, trained_fluent: World, tmp_path: Path) -> None:
    if _versions(trtllm_serving)["trtllm"] == "True":
        pytest.skip("this image holds TensorRT-LLM (built FROM NGC): the gpu test below serves its trtllm repository")
    repository = _export(trained_fluent, tmp_path / "tuna", trtllm=True)
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path)], check=True)
    name, _ = _run(trtllm_serving, repository)
    try:
        code, text = support.wait_for_exit(name, 300, "tritonserver kept running with a tensorrt_llm step that cannot load")
        assert code != "0", text[-3000:]
        for step in STEPS:
            assert f"successfully loaded '{step}'" in text, (step, text[-3000:])
        failed = [line for line in text.splitlines() if "failed to load 'tensorrt_llm'" in line]
        assert failed and "which this Python (3.12" in failed[0], text[-3000:]
        assert "make image-serving-trtllm" in failed[0] and "Traceback" not in text, failed[0]
    finally:
        _docker("rm", "-f", name, timeout=120)


def _gpus() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.gpu
def test_on_a_gpu_the_trtllm_export_answers_with_provenance(trtllm_serving: str, trained_fluent: World, tmp_path: Path) -> None:
    """On a GPU machine (the image built FROM NGC's, the NVIDIA container toolkit): TensorRT-LLM's PyTorch engine in the
    tensorrt_llm step answers every question, with the tags the in-process retrieval gives (bf16 may differ from the
    float32 greedy text in a token: the text is compared as non-empty, repeated requests as equal)."""
    if not _gpus():
        pytest.skip("no NVIDIA GPU here (nvidia-smi -L fails): run on a GPU machine with the NVIDIA container toolkit")
    if _versions(trtllm_serving)["trtllm"] != "True":
        pytest.skip(f"{trtllm_serving} has no TensorRT-LLM: build it FROM NGC with `make image-serving-trtllm`")
    cpu_repository = _export(trained_fluent, tmp_path / "cpu")
    asked = support.finer_questions(trained_fluent, 4)
    _, tables, _ = support.greedy_reference(trained_fluent, cpu_repository, asked, MAX_TOKENS)
    repository = _export(trained_fluent, tmp_path / "gpu", trtllm=True)
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path)], check=True)
    name, url = _run(trtllm_serving, repository, "--gpus", "all")
    try:
        support.wait_for_container(name, url, 900)
        served = support.ask_all(url, asked, MAX_TOKENS)
        assert all(s.text.strip() for s in served) and support.ask_all(url, asked, MAX_TOKENS) == served
        assert [s.provenance["tags"] for s in served] == [t.provenance["tags"] for t in tables]
    finally:
        _docker("rm", "-f", name, timeout=120)
