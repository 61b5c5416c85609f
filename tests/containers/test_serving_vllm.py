"""The CPU serving image with vLLM (issue 17, Dockerfile target serving-vllm) for real: `docker run` of the image on a
repository exported with serve.engine=vllm answers the `tuna` ensemble's gRPC questions through the vLLM engine, with
the answers of the in-process greedy model (``Predictor.answer``) and the retrieval step's provenance.

`make test-containers` builds the image (``TUNA_VLLM_SERVING_IMAGE``, default tuna-serving:0.1.0-vllm) and runs this
suite; without an engine or the image every test skips in one line naming the command that provides it. The served
model is the smoke world with a one-head LM (vLLM's CPU attention does not take the smoke LM's head size 16) trained a
little longer than smoke (``FLUENT``), so that its answers differ per question.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from support import FLUENT, HEAD32, SMOKE, VLLM_SERVING_IMAGE, World, finer_questions, greedy_reference, wait_for_container, wait_for_exit
from tuna.images import ImageError, check_serving_image, image_engines, image_exists
from tuna.recipe import load_recipe

pytestmark = [pytest.mark.containers, pytest.mark.vllm]
MAX_TOKENS = 8
CFG_VLLM = load_recipe(SMOKE, ["serve.engine=vllm", f"cluster.serving_image={VLLM_SERVING_IMAGE}"])
BUILD = (f"tuna image --config configs/smoke.yaml --target serving-vllm serve.engine=vllm "
         f"cluster.serving_image={VLLM_SERVING_IMAGE} (make test-containers does)")


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def serving_vllm(engine: str) -> str:
    if not image_exists(VLLM_SERVING_IMAGE):
        pytest.skip(f"no image {VLLM_SERVING_IMAGE} in the Docker engine; build it with `{BUILD}`")
    return check_serving_image(CFG_VLLM, str(SMOKE))


def test_the_vllm_image_holds_both_engines_in_separate_venvs(serving_vllm: str) -> None:
    """The project venv (numpy<2, on the image's PYTHONPATH) and the vLLM venv (numpy 2, CPU torch), run as the LLM
    step's vllm_env.tar.gz runs it: PYTHONPATH unset (with it, the vLLM venv's Python imports the project's packages)."""
    assert image_engines(serving_vllm) == ("hf", "vllm")
    script = ("set -e; echo uid=$(id -u); echo venv=$TUNA_VLLM_VENV; python -c 'import numpy; print(\"project=\" + numpy.__version__)'; "
              "env -u PYTHONPATH /opt/vllm-venv/bin/python -c 'import importlib.util as u, numpy, torch, vllm; "
              "print(\"vllm=\", vllm.__version__, torch.__version__, numpy.__version__, torch.version.cuda, "
              "[m for m in (\"torchvision\", \"torchaudio\", \"torchcodec\") if u.find_spec(m)])'")
    done = _docker("run", "--rm", "--network", "none", "--entrypoint", "sh", serving_vllm, "-c", script, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    said = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.split("=", 1)[0] in ("uid", "venv", "project", "vllm"))
    assert said["uid"] == "1000" and said["venv"] == "/opt/vllm-venv"
    assert said["project"].startswith("1."), said        # the project venv keeps numpy<2 (nvidia-pytriton)
    vllm, torch, numpy, cuda, leftovers = said["vllm"].split(None, 4)
    assert vllm.startswith("0.32.0") and torch == "2.13.0+cpu" and numpy.startswith("2.") and cuda == "None", said
    assert leftovers == "[]", said                        # PyPI's CUDA torchvision/torchaudio/torchcodec removed


def test_a_vllm_recipe_on_the_hf_serving_image_is_refused_in_one_line(serving: str) -> None:
    """The hf serving image (target serving) has no vLLM venv: a vllm recipe naming it is refused, naming the image and
    the rebuild command."""
    cfg = load_recipe(SMOKE, ["serve.engine=vllm", f"cluster.serving_image={serving}"])
    with pytest.raises(ImageError) as err:
        check_serving_image(cfg, "configs/smoke.yaml")
    text = str(err.value)
    assert "\n" not in text and serving in text and "serve.engine is vllm" in text
    assert f"tuna image --config configs/smoke.yaml --target serving-vllm serve.engine=vllm cluster.serving_image={serving}`" in text


@pytest.fixture(scope="module")
def repository(trained_fluent: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-head smoke model (trained to answer in words) exported with serve.engine=vllm (the LLM step's vllm_env.tar.gz activates the image's
    $TUNA_VLLM_VENV); opened to the container's uid 1000 after the in-process reference has read it."""
    from tuna.serve.export import export_repository

    cfg = load_recipe(SMOKE, [f"run.data_dir={trained_fluent.cfg.data_dir}", *HEAD32, *FLUENT, "serve.engine=vllm"])
    out = tmp_path_factory.mktemp("served-vllm") / "tuna"
    export_repository(cfg, "tuna", out=out, log=lambda s: None)
    return out / "model_repository"


@pytest.fixture(scope="module")
def reference(trained_fluent: World, repository: Path) -> tuple[list[tuple[bytes, str]], list[str], list[dict]]:
    """(questions, in-process greedy answers, in-process provenance): what the container must reply."""
    asked = finer_questions(trained_fluent, 4)
    _, tables, expected = greedy_reference(trained_fluent, repository, asked, MAX_TOKENS)
    subprocess.run(["chmod", "-R", "a+rwX", str(repository.parent)], check=True)   # Milvus Lite locks its folder
    return asked, expected, [t.provenance for t in tables]


@pytest.fixture(scope="module")
def served_vllm(serving_vllm: str, repository: Path, reference: tuple) -> Iterator[tuple[str, str, float]]:
    """The image run as the chart runs it (uid 1000, read-only root, HOME and /tmp writable, /models, shm) on the host
    network, tritonserver bound to 127.0.0.1 on free ports; yields (gRPC URL, container name, seconds to ready)."""
    from tuna.serve.server import free_port

    name, (grpc, http, metrics) = f"tuna-serving-vllm-{uuid.uuid4().hex[:8]}", (free_port(), free_port(), free_port())
    start = time.monotonic()
    run = _docker("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp:rw,exec,size=2g",
                  "--shm-size", "1g", "-e", "HOME=/tmp", "-e", "PYTHONDONTWRITEBYTECODE=1", "-v", f"{repository}:/models",
                  serving_vllm, "tritonserver", "--model-repository=/models", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
                  "--http-address=127.0.0.1", f"--http-port={http}", "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
                  "--exit-timeout-secs=25")
    try:
        assert run.returncode == 0, run.stderr
        url = f"127.0.0.1:{grpc}"
        wait_for_container(name, url, 600)
        yield url, name, time.monotonic() - start
    finally:
        _docker("rm", "-f", name, timeout=120)


def test_docker_run_answers_grpc_questions_through_vllm_like_the_in_process_model(served_vllm: tuple[str, str, float],
                                                                                   reference: tuple) -> None:
    from tuna.serve.client import TunaClient

    url, name, ready_seconds = served_vllm
    asked, expected, provenance = reference
    processes = _docker("top", name, "-eo", "pid,args").stdout
    assert "EngineCore" in processes, f"no vLLM engine core among the container's processes:\n{processes}"
    client = TunaClient(url, timeout=120)
    latencies, served = [], []
    for image, question in asked:
        t = time.monotonic()
        served.append(client.ask(image, question, max_tokens=MAX_TOKENS))
        latencies.append(time.monotonic() - t)
    client.close()
    answers = [s.text for s in served]
    assert answers == expected, [(q, a, e) for (_, q), a, e in zip(asked, answers, expected) if a != e]
    assert len(answers) == 8 and all(answers) and len(set(answers)) > 1, answers   # not one degenerate answer
    for s, want in zip(served, provenance):   # the retrieval step's provenance, as the HF engine's ensemble gives it
        assert s.provenance["datastore"] == "A" and s.provenance["tags"] == want["tags"] and s.provenance["model"]["name"]
        assert np.allclose(s.provenance["weights"], want["weights"], atol=1e-5)
        assert set(s.provenance) == set(want)
    memory = _docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
    print(f"\nserving-vllm container ready in {ready_seconds:.0f} s; {len(asked)} gRPC questions, p50 "
          f"{1000 * float(np.median(latencies)):.0f} ms; memory {memory}; answers {answers}", file=sys.stderr)


def test_a_vllm_export_in_the_hf_serving_image_fails_naming_the_serving_vllm_image(serving: str, repository: Path,
                                                                                   reference: tuple, tmp_path: Path) -> None:
    """The plain serving image has no vLLM venv: the LLM step of a vllm export refuses to load (before the fix its load
    hung forever: the activate script failed and Triton waited for a stub that never started), tritonserver exits
    non-zero and its log says which image to run."""
    import shutil

    copy = tmp_path / "model_repository"   # a copy: the served container holds the Milvus Lite folders of the original
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path)], check=True)
    name = f"tuna-serving-hf-{uuid.uuid4().hex[:8]}"
    run = _docker("run", "-d", "--name", name, "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,exec,size=1g",
                  "--shm-size", "256m", "-e", "HOME=/tmp", "-v", f"{copy}:/models", serving)
    try:
        assert run.returncode == 0, run.stderr
        code, text = wait_for_exit(name, 180, "tritonserver kept running with an LLM step that cannot load")
        assert code != "0"
        failed = [line for line in text.splitlines() if "failed to load 'tensorrt_llm'" in line]
        assert failed and "TUNA_VLLM_VENV='' is not a venv" in failed[0], text[-3000:]
        assert "in a container run the serving-vllm image (tuna image --target serving-vllm" in failed[0], failed[0]
    finally:
        _docker("rm", "-f", name)
