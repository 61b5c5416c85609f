"""DVC for real: `dvc repro world@smoke`, push to a local remote, wipe, pull, and get the same bytes."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A throwaway copy of the repo's DVC project (dvc.yaml, recipes, stage deps) in its own git repo."""
    proj = tmp_path / "proj"
    for rel in ("dvc.yaml", ".dvcignore", "configs", "platform/tuna"):
        src = REPO / rel
        dst = proj / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    _run(["git", "init", "-q"], proj)
    _run(["dvc", "init", "-q"], proj)
    _run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "remote")], proj)
    return proj


def test_repro_push_pull_roundtrip(project: Path, tmp_path: Path) -> None:
    _run(["dvc", "repro", "world@smoke"], project)
    world = project / "data/smoke/world"
    manifest = json.loads((world / "manifest.json").read_text())
    assert manifest["counts"]["web_A"] == 300
    before = _tree_hash(world)
    lock = (project / "dvc.lock").read_text()
    assert "world@smoke" in lock and "run.seed" in lock

    _run(["dvc", "push", "world@smoke"], project)
    shutil.rmtree(world)
    shutil.rmtree(project / ".dvc/cache")
    _run(["dvc", "pull", "world@smoke"], project)
    assert _tree_hash(world) == before

    # Nothing changed, so the stage is cached: repro reports it up to date and regenerates nothing.
    out = _run(["dvc", "status", "world@smoke"], project)
    assert "up to date" in out.lower() or out.strip() == ""


def test_params_change_invalidates_stage(project: Path) -> None:
    _run(["dvc", "repro", "world@smoke"], project)
    recipe = project / "configs/smoke.yaml"
    recipe.write_text(recipe.read_text().replace("seed: 0 ", "seed: 1 "))
    out = _run(["dvc", "status", "world@smoke"], project)
    assert "modified" in out and "run.seed" in out


def test_default_remote_is_outside_the_git_tree() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".dvc/config")
    default = cfg["core"]["remote"].strip()
    url = cfg[f"'remote \"{default}\"'"]["url"].strip()
    remote = (REPO / ".dvc" / url).resolve() if not os.path.isabs(url) else Path(url)
    assert REPO not in remote.parents and remote != REPO, remote


def test_datasets_are_not_committed_to_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/mini/world/manifest.json"], cwd=REPO)
    assert ignored.returncode == 0


def test_whole_smoke_dag_reproduces_and_its_datastore_snapshot_pulls_back_identically(project: Path) -> None:
    """`dvc repro eval@smoke export@smoke` runs every stage of the DAG through its `tuna` verb (world,
    encoder, mine, index A/B/A_captions, lm, train tuna + baseline, eval, export); afterwards nothing is
    stale and `dvc metrics show` has the eval metrics. Then datastore A's chain is pushed, wiped and
    pulled: the pulled Milvus Lite folder gives the same neighbours as the one that was built."""
    from tuna.recipe import load_recipe
    from tuna.retrieval.datastore import Retriever

    _run(["dvc", "repro", "eval@smoke", "export@smoke"], project)
    lock = (project / "dvc.lock").read_text()
    for stage in ("world@smoke", "encoder@smoke", "mine@smoke", "index@smoke-A", "index@smoke-B", "lm@smoke",
                  "train@smoke-tuna", "train@smoke-baseline", "eval@smoke", "export@smoke"):
        assert f"{stage}:" in lock, stage
    assert (project / "data/smoke/serve/tuna/model_repository/tuna/config.pbtxt").is_file()
    status = _run(["dvc", "status", "eval@smoke", "export@smoke", "--with-deps"], project)
    assert "changed" not in status and "modified" not in status, status
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], project))
    text = json.dumps(metrics)
    assert "eval/tuna/metrics.json" in text and "eval/baseline/metrics.json" in text and "finer" in text
    cfg = load_recipe(project / "configs/smoke.yaml", [f"run.data_dir={project / 'data/smoke'}"])
    rng = np.random.default_rng(0)
    dim = json.loads((project / "data/smoke/datastores/A/manifest.json").read_text())["encoder"]["dim"]
    queries = rng.normal(size=(40, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def neighbours() -> list[list[tuple[str, float]]]:
        r = Retriever(cfg)
        try:
            return [[(n.id, round(n.score, 5)) for n in x.neighbours] for x in r.retrieve("A", queries, k=5)]
        finally:
            r.close()

    before = neighbours()
    chain = ["world@smoke", "encoder@smoke", "mine@smoke", "index@smoke-A"]
    _run(["dvc", "push", *chain], project)
    shutil.rmtree(project / "data/smoke")
    shutil.rmtree(project / ".dvc/cache")
    _run(["dvc", "pull", *chain], project)
    assert neighbours() == before
    out = _run(["dvc", "status", *chain], project)
    assert "changed" not in out and "modified" not in out, out


def test_exp_run_sets_a_recipe_param_and_tracks_the_experiment(project: Path) -> None:
    """Ablations are DVC experiments: `dvc exp run -S <recipe>:<key>=<value>` rewrites the recipe, reruns the
    stages that depend on the key, and `dvc exp show` lists the experiment with that param."""
    _run(["dvc", "repro", "world@smoke"], project)
    _run(["git", "add", "-A"], project)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)
    _run(["dvc", "exp", "run", "-n", "web200", "-S", "configs/smoke.yaml:world.sizes.web=200", "world@smoke"], project)
    manifest = json.loads((project / "data/smoke/world/manifest.json").read_text())
    assert manifest["counts"]["web_A"] == 200
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], project))
    text = json.dumps(shown)
    assert "web200" in text and '"web": 200' in text.replace('"web":200', '"web": 200')
