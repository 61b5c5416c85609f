"""`tuna pipeline run --local`: the compiled pipeline through kfp.local (SubprocessRunner, this venv) on the smoke recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import SMOKE, check_smoke_pipeline_run, outputs
from tuna.kfp.local import run_local
from tuna.kfp.options import PipelineError


def test_bad_parameter_fails_the_first_task_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        run_local(SMOKE, [f"run.data_dir={tmp_path}"], params={"deploy_target": "helm"})
    assert str(info.value) == ("kfp.local: validate: error: pipeline parameter deploy_target: helm installs into a "
                               "Kubernetes cluster; with target=local use deploy_target=local")
    assert not (tmp_path / "world").exists() and not (tmp_path / "train").exists()
    status = json.loads((tmp_path / "kfp" / "status.jsonl").read_text().splitlines()[-1])
    assert status["state"] == "FAILED"  # the exit handler ran anyway


def test_cli_run_local_reports_the_failing_task_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuna.cli import main

    code = main(["pipeline", "run", "--local", "--config", str(SMOKE), f"run.data_dir={tmp_path}",
                 "--param", "serve_datastore=C"])
    last = capsys.readouterr().err.rstrip().splitlines()[-1]  # kfp.local logs each task before it
    assert code == 2
    assert last == ("tuna pipeline: error: kfp.local: validate: error: pipeline parameter serve_datastore: unknown "
                    "datastore 'C'; the recipe declares A, B, A_captions")


@pytest.mark.integration
def test_kfp_local_runs_the_whole_smoke_pipeline(tmp_path: Path) -> None:
    out = run_local(SMOKE, [f"run.data_dir={tmp_path}"])
    check_smoke_pipeline_run(out, tmp_path)
    assert out["cached"] == []

    again = run_local(SMOKE, [f"run.data_dir={tmp_path}"], params={"deploy_target": "none"})  # same recipe: cache
    assert again["tasks"] == sorted(["validate", "start-run", "train", "train-2", "train-3", "train-4", "evaluate",
                                     "export-model-repository", "register-model", "deploy", "notify"])
    assert again["cached"] == sorted(["world", "encoder", "mine-tags", "build-index", "build-index-2", "build-index-3",
                                      "lm"])
    assert outputs(Path(again["run_dir"]) / "deploy")["parameters"]["Output"] == "deploy skipped (deploy_target=none)"


# ------------------------------------------------------------------------- the docker runner's mounts (no engine)


def test_docker_mounts_give_the_tasks_the_host_paths(tmp_path: Path) -> None:
    from tuna.kfp.docker_local import docker_mounts
    from tuna.recipe import load_recipe

    finer = tmp_path / "theirs" / "finer_ood.jsonl"
    finer.parent.mkdir()
    finer.write_text("")
    data = tmp_path / "data"
    cfg = load_recipe(SMOKE, [f"run.data_dir={data}", f"data.finer_ood.path={finer}"])
    mounts = docker_mounts(cfg, SMOKE, data / "kfp")
    assert mounts == [
        {"Type": "bind", "Source": str(data), "Target": str(data), "ReadOnly": False},        # pipeline root inside
        {"Type": "bind", "Source": str(SMOKE.parent), "Target": str(SMOKE.parent), "ReadOnly": True},
        {"Type": "bind", "Source": str(finer.parent), "Target": str(finer.parent), "ReadOnly": True},
    ]


def test_docker_mounts_refuse_a_relative_source_path(tmp_path: Path) -> None:
    from tuna.kfp.docker_local import docker_mounts
    from tuna.recipe import load_recipe

    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", "data.finer_ood.path=theirs/finer_ood.jsonl"])
    with pytest.raises(PipelineError) as info:
        docker_mounts(cfg, SMOKE, tmp_path / "kfp")
    assert str(info.value) == ("data.finer_ood: path 'theirs/finer_ood.jsonl' is relative; the task containers see "
                               "host paths only when absolute: give the absolute path")


def test_unknown_runner_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        run_local(SMOKE, [f"run.data_dir={tmp_path}"], runner="podman")
    assert str(info.value) == "runner: 'podman' is not one of subprocess, docker"
    assert not any(tmp_path.iterdir())


def test_docker_user_is_numeric_uid_gid() -> None:
    from tuna.kfp.docker_local import parse_user

    assert parse_user("1000:1000") == (1000, 1000) and parse_user("1001") == (1001, 1001)
    for bad in ("mpiuser", "1000:", "1:2:3", "-1"):
        with pytest.raises(PipelineError) as info:
            parse_user(bad)
        assert str(info.value) == f"--docker-user {bad!r}: give numeric UID:GID, e.g. 1000:1000 (the image's user)"


def test_writable_by_reads_the_permission_bits(tmp_path: Path) -> None:
    import os

    from tuna.kfp.docker_local import writable_by

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    me, group = os.getuid(), os.getgid()
    assert writable_by(mine / "not" / "yet", me, group) and writable_by(mine, 0, 0)
    other = me + 4242
    assert not writable_by(mine, other, other)
    mine.chmod(0o777)
    assert writable_by(mine / "later", other, other)


def test_a_data_dir_the_docker_user_cannot_write_is_one_line(tmp_path: Path) -> None:
    from tuna.kfp.docker_local import docker_runner
    from tuna.recipe import load_recipe

    tmp_path.chmod(0o755)
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    with pytest.raises(PipelineError) as info:
        docker_runner(cfg, SMOKE, tmp_path / "kfp", tmp_path / "err", user="4242:4242")
    assert str(info.value) == (f"run.data_dir {tmp_path} is not writable by --docker-user 4242:4242; `chown -R "
                               f"4242:4242 {tmp_path}` or run the tasks as yourself (drop --docker-user)")


def test_a_dead_task_container_is_named_with_its_status_and_last_lines() -> None:
    import json

    from tuna.kfp.docker_local import exit_line, task_name

    command = ["sh", "-c", "...", "--executor_input",
               json.dumps({"outputs": {"outputFile": "/d/kfp/tuna-2026/encoder/executor_output.json"}}), "--function_to_execute", "encoder"]
    assert task_name(command) == "encoder" and task_name(["sh", "-c", "x"]) == "task"
    assert exit_line("encoder", 137, ["epoch 1\n", "\n", "epoch 2\n"]) == (
        "encoder: container exited with status 137 (killed: docker kill, or out of memory); its last log lines: "
        "epoch 1 | epoch 2")
    assert exit_line("lm", 1, []) == "lm: container exited with status 1; its last log lines: (none)"


def test_the_inputs_digest_follows_the_recipe_content_and_declared_sources(tmp_path: Path) -> None:
    import shutil

    from tuna.kfp.tasks import inputs_digest

    recipe = tmp_path / "r.yaml"
    shutil.copy(SMOKE, recipe)
    finer = tmp_path / "finer_ood.jsonl"
    finer.write_text("{}\n")
    base = [f"run.data_dir={tmp_path / 'd'}"]
    first = inputs_digest(str(recipe), base)
    assert len(first) == 16 and inputs_digest(str(SMOKE), base) == first   # the content counts, not the path
    recipe.write_text(recipe.read_text().replace("seed: 0 ", "seed: 1 "))
    assert inputs_digest(str(recipe), base) != first                       # an edited recipe file misses the cache
    declared = inputs_digest(str(SMOKE), [*base, f"data.finer_ood.path={finer}"])
    assert declared != first
    finer.write_text("{}\n{}\n")
    assert inputs_digest(str(SMOKE), [*base, f"data.finer_ood.path={finer}"]) != declared  # their data changed
