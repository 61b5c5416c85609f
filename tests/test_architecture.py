"""The layout rules of DESIGN.md, checked on the source: model code is pure, each engine has one home."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "platform" / "tuna"
# engine -> the only module(s) under platform/tuna allowed to import it
ENGINE_HOMES = {
    "pymilvus": {"retrieval/store.py"},
    "milvus_lite": {"retrieval/store.py"},
    "mlflow": {"track.py"},
    # the tuna.kfp package: compile / submit / kfp.local (imports inside functions); its task functions never
    # import kfp (they run in every pipeline pod); components/ and pipelines/ are outside platform/tuna
    "kfp": {"kfp/compile.py", "kfp/submit.py", "kfp/local.py"},
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


def test_the_kfp_package_imports_the_real_sdk() -> None:
    """Inside tuna/kfp/, `import kfp` / `from kfp import ...` are absolute: the SDK, never the package itself."""
    for path in sorted((SRC / "kfp").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kfp":
                assert node.level == 0, f"{path.name}: relative import of {node.module}"
    import kfp
    from kfp import compiler, local

    import tuna.kfp.compile  # noqa: F401 - imported first, then kfp must still be the SDK
    import tuna.kfp.local  # noqa: F401

    assert Path(kfp.__file__).parent.parent.name == "site-packages", kfp.__file__
    assert compiler.Compiler and local.SubprocessRunner


def test_pipelines_and_components_are_packages_not_paths() -> None:
    """pipelines/ and components/ install as tuna_pipelines / tuna_components; nothing loads modules by file path."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {"tuna": REPO / "platform" / "tuna", "tuna_pipelines": REPO / "pipelines",
               "tuna_components": REPO / "components"}
    on_disk = set()
    for name, root in folders.items():
        assert project["package-dir"].get(name, f"platform/{name}") == str(root.relative_to(REPO)), name
        for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            if folder.name in ("__pycache__", "compiled") or folder.name.endswith(".egg-info"):
                continue
            on_disk.add(".".join([name, *folder.relative_to(root).parts]))
    listed = set(project["packages"])
    assert on_disk == listed, (f"pyproject.toml [tool.setuptools] packages: add {sorted(on_disk - listed)}, "
                               f"remove {sorted(listed - on_disk)}")
    for root in folders.values():
        for path in root.rglob("*.py"):
            assert "spec_from_file_location" not in path.read_text(encoding="utf-8"), path
    from tuna_components.train.component import train
    from tuna_pipelines.tuna import COMPONENTS

    assert COMPONENTS["train"] is train


@pytest.mark.parametrize("path", sorted((SRC / "kfp").glob("*.py")), ids=lambda p: p.name)
def test_kfp_modules_stay_under_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 600, f"{path.relative_to(SRC)} has {lines} lines; split it by role"
