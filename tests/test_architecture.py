"""The layout rules of DESIGN.md, checked on the source: model code is pure, each engine has one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "platform" / "tuna"
# engine -> the only module(s) under platform/tuna allowed to import it
ENGINE_HOMES = {
    "pymilvus": {"retrieval/store.py"},
    "milvus_lite": {"retrieval/store.py"},
    "mlflow": {"track.py"},
    # compile / submit / kfp.local front door (imports inside functions); components/ and pipelines/ are outside
    "kfp": {"pipeline.py"},
    # The gRPC client; configs.py reads only Triton's model-config protobuf schema (it never connects).
    "tritonclient": {"serve/client.py", "serve/configs.py"},
    "pytriton": {"serve/server.py"},                        # the bundled tritonserver binary
    "triton_python_backend_utils": {"serve/python_backend.py"},  # inside Triton's python stub only
    "kubernetes": {"train/cluster.py"},
}
MODEL_FORBIDDEN = {"pymilvus", "kfp", "mlflow", "tritonclient", "milvus_lite", "deepspeed"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


SOURCES = sorted(SRC.rglob("*.py"))


def test_platform_is_a_source_root_not_a_package() -> None:
    assert not (SRC.parent / "__init__.py").exists()


@pytest.mark.parametrize("path", [p for p in SOURCES if "model" in p.relative_to(SRC).parts], ids=lambda p: p.name)
def test_model_code_is_pure(path: Path) -> None:
    bad = _imports(path) & MODEL_FORBIDDEN
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith(("from tuna.", "import tuna.")):  # only its own package and the error types
            assert line.strip().startswith(("from tuna.model", "from tuna.errors", "import tuna.model")), line


@pytest.mark.parametrize("engine", sorted(ENGINE_HOMES))
def test_each_engine_is_touched_in_one_module(engine: str) -> None:
    users = {str(p.relative_to(SRC)) for p in SOURCES if engine in _imports(p)}
    assert users <= ENGINE_HOMES[engine], f"{engine} imported by {sorted(users - ENGINE_HOMES[engine])}"


def _modules(path: Path) -> set[str]:
    """Every module ``path`` imports, dotted in full (``from tuna.train import data`` counts as tuna.train.data)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


SHARED_USERS = [p for p in SOURCES if p.relative_to(SRC).parts[0] in ("serve", "eval") or p.name == "inference.py"]


@pytest.mark.parametrize("path", SHARED_USERS, ids=lambda p: str(p.relative_to(SRC)))
def test_serving_and_evaluation_take_templates_and_tag_tensors_from_the_model_not_training(path: Path) -> None:
    """The chat template, prompt ids, tag tensors and padding live in tuna.model.processing_tuna."""
    bad = {m for m in _modules(path) if m == "tuna.train.data" or m.startswith("tuna.train.data.")}
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}; use tuna.model.processing_tuna"
