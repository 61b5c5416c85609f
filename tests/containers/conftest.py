"""Fixtures of the containers suite: the Docker engine and the images, each skipping the test in one line naming what
is missing and the command that provides it (make test-containers provides them all)."""

from __future__ import annotations

import os

import pytest

from support import SMOKE
from tuna.images import ImageError, docker_engine, image_exists
from tuna.recipe import load_recipe

CFG = load_recipe(SMOKE)


@pytest.fixture(scope="session")
def engine() -> str:
    try:
        return docker_engine()
    except ImageError as err:
        pytest.skip(str(err))


CUDA_IMAGE = os.environ.get("TUNA_CUDA_IMAGE") or "ghcr.io/tuna-platform/tuna:0.1.0-cu130"  # the Makefile's CUDA_IMAGE
# the Makefile's CUDA_SERVING_IMAGE (make image-serving-cuda)
CUDA_SERVING_IMAGE = os.environ.get("TUNA_CUDA_SERVING_IMAGE") or "ghcr.io/tuna-platform/tuna-serving:0.1.0-vllm-cu130"


# the Makefile's TRTLLM_SERVING_IMAGE (make image-serving-trtllm, or make image-serving-trtllm-standin here)
TRTLLM_SERVING_IMAGE = os.environ.get("TUNA_TRTLLM_SERVING_IMAGE") or "ghcr.io/tuna-platform/tuna-serving:0.1.0-trtllm"


def _image(ref: str, build: str = "`make image` (make test-containers does)") -> str:
    if not image_exists(ref):
        pytest.skip(f"no image {ref} in the Docker engine; build it with {build}")
    return ref


@pytest.fixture(scope="session")
def serving(engine: str) -> str:
    return _image(CFG.cluster.serving_image)


@pytest.fixture(scope="session")
def project(engine: str) -> str:
    return _image(CFG.cluster.image)


@pytest.fixture(scope="session")
def base(engine: str) -> str:
    ref = os.environ.get("TUNA_BASE_IMAGE", "tuna-base:bookworm")
    if not image_exists(ref):
        pytest.skip(f"no base image {ref} in the Docker engine; build it with `make base-image`")
    return ref


@pytest.fixture(scope="session")
def cuda_image(engine: str) -> str:
    """The CUDA project image (TUNA_CUDA_IMAGE=<ref> for another tag); ~7.5 GB, so make test-containers leaves it out."""
    return _image(CUDA_IMAGE, "`make image-cuda` (make test-containers does not)")


@pytest.fixture(scope="session")
def cuda_serving(engine: str) -> str:
    """The GPU serving image (TUNA_CUDA_SERVING_IMAGE=<ref> for another tag); ~12 GB, so make test-containers leaves it out."""
    return _image(CUDA_SERVING_IMAGE, "`make image-serving-cuda` (make test-containers does not)")


@pytest.fixture(scope="session")
def trtllm_serving(engine: str) -> str:
    """The TensorRT-LLM serving image (TUNA_TRTLLM_SERVING_IMAGE=<ref> for another tag), FROM NGC's image or its stand-in."""
    return _image(TRTLLM_SERVING_IMAGE, "`make image-serving-trtllm` (FROM NGC) or `make image-serving-trtllm-standin` "
                                        "(make test-containers does not)")
