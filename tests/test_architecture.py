"""The layout rules of DESIGN.md, checked on the source: model code is pure, each engine has one home."""

from __future__ import annotations

import ast
import re
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
    "kfp": {"kfp/compile.py", "kfp/submit.py", "kfp/local.py", "kfp/docker_local.py"},
    # the Docker SDK (kfp.local's DockerRunner's containers); images.py runs the docker CLI
    "docker": {"kfp/docker_local.py"},
    # The gRPC client; model_config.py reads only Triton's model-config protobuf schema (it never connects).
    "tritonclient": {"serve/client.py", "serve/model_config.py"},
    "pytriton": {"serve/server.py"},                        # the bundled tritonserver binary
    "triton_python_backend_utils": {"serve/python_backend.py"},  # inside Triton's python stub only
    "kubernetes": {"train/cluster.py"},
    "vllm": {"serve/vllm_engine.py"},                       # runs in the vLLM venv only (make vllm-env)
    "tensorrt_llm": {"serve/trtllm_engine.py"},             # runs in the GPU serving image only (NGC trtllm base)
}
MODEL_FORBIDDEN = {"pymilvus", "kfp", "mlflow", "tritonclient", "milvus_lite", "deepspeed", "vllm", "tensorrt_llm"}


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


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement (function-level too) except those under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    """tuna module -> the tuna modules it imports (``from tuna.foundation.lm import pretrain`` counts as tuna.foundation.lm.pretrain)."""
    modules = {_module_name(p): p for p in SOURCES}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    target = sub if sub in modules else node.module
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_only_layout_joins_paths_onto_the_run_folder() -> None:
    """Run paths come from tuna.layout, inputs from tuna.sources: no module joins onto data_dir or the world by hand."""
    allowed = {"layout.py", "sources.py"}
    pattern = re.compile(r"data_dir\s*/|data_dir\.resolve\(\)\s*/|[\"']world[\"']\s*/|/\s*[\"']world[\"']|world_dir\(")
    offenders = [f"{p.relative_to(SRC)}:{n}: {line.strip()}" for p in SOURCES if str(p.relative_to(SRC)) not in allowed
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line) and not line.strip().startswith(("#", '"""', "``"))]
    assert offenders == []


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
    """The chat template, prompt ids, tag tensors and padding live in tuna.model.processing_tuna; run paths in
    tuna.layout; variants in tuna.variants: serve/, eval/ and inference.py import nothing from tuna.train."""
    bad = {m for m in _modules(path) if m == "tuna.train" or m.startswith("tuna.train.")}
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}; use tuna.model.processing_tuna, tuna.layout, tuna.variants"


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


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_under_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 600, f"{path.relative_to(SRC)} has {lines} lines; split it by role"
