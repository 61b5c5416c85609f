"""`tuna pipeline run --local`: the compiled pipeline through kfp.local (SubprocessRunner, this venv) on the smoke recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support import SMOKE
from tuna.kfp.local import run_local
from tuna.kfp.options import PipelineError


def outputs(task_dir: Path) -> dict[str, Any]:
    """A kfp.local task's executor output: {"artifacts": {name: [artifact, ...]}, "parameters": {...}}."""
    data = json.loads((task_dir / "executor_output.json").read_text())
    return {"artifacts": {k: v["artifacts"] for k, v in data.get("artifacts", {}).items()},
            "parameters": data.get("parameterValues", {})}


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
                    "datastore 'C'; known: A, B, A_captions")


@pytest.mark.integration
def test_kfp_local_runs_the_whole_smoke_pipeline(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tuna import track
    from tuna.recipe import load_recipe

    out = run_local(SMOKE, [f"run.data_dir={tmp_path}"])
    run = Path(out["run_dir"])
    assert out["seconds"] < 600, out["seconds"]
    assert out["tasks"] == sorted(["validate", "world", "encoder", "mine-tags", "build-index", "build-index-2",
                                   "build-index-3", "lm", "start-run", "train", "train-2", "train-3", "train-4",
                                   "evaluate", "export-model-repository", "register-model", "deploy", "notify"])
    o = {task: outputs(run / task) for task in out["tasks"]}

    assert o["validate"]["parameters"]["overrides"] == [f"run.data_dir={tmp_path}"]
    (world,) = o["world"]["artifacts"]["dataset"]
    assert world["metadata"]["status"] == "generated" and world["metadata"]["uri"] == str(tmp_path / "world")
    assert json.loads(Path(world["uri"]).read_text())["counts"]["web_A"] == 300  # the manifest, in the artifact
    assert len(world["metadata"]["digests"]["instruction"]) == 64
    (enc,) = o["encoder"]["artifacts"]["model"]
    assert enc["metadata"]["status"] == "trained" and enc["metadata"]["dim"] == 32
    rows = {o[t]["artifacts"]["index"][0]["metadata"]["name"]: o[t]["artifacts"]["index"][0]["metadata"]["rows"]
            for t in ("build-index", "build-index-2", "build-index-3")}
    assert rows == {"A": 292, "B": 100, "A_captions": 292}
    trained = {(m["variant"], m["stage"]): m for t in ("train", "train-2", "train-3", "train-4")
               for m in [o[t]["artifacts"]["model"][0]["metadata"]]}
    assert set(trained) == {("tuna", 1), ("tuna", 2), ("baseline", 1), ("baseline", 2)}
    for m in trained.values():
        assert m["status"] == "trained" and m["steps"] == 6 and m["world_size"] == 2 and Path(m["uri"]).is_dir()
    metrics = o["evaluate"]["artifacts"]["metrics"][0]["metadata"]
    assert {"tuna_pope_id_f1", "baseline_pope_id_f1", "tuna_finer_ood_fine_em", "tuna_finer_b_B_fine_em"} <= set(metrics)
    report = o["evaluate"]["artifacts"]["report"][0]
    assert Path(report["uri"]).read_text().startswith("# TUNA evaluation report: smoke")
    (repo,) = o["export-model-repository"]["artifacts"]["repository"]
    assert (Path(repo["metadata"]["path"]) / "tuna" / "config.pbtxt").is_file()
    assert set(repo["metadata"]["datastores"]) == {"A", "B"}
    assert o["register-model"]["parameters"]["Output"] == "models:/tuna-smoke-serving@evaluated"
    assert o["deploy"]["parameters"]["Output"].startswith("gRPC answer ")
    assert o["notify"]["parameters"]["Output"].endswith(": SUCCEEDED")

    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    client = MlflowClient(track.tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name(cfg.track.experiment).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tuna.kind") == "pipeline"]
    assert parent.info.run_name == "smoke-kfp" and parent.info.status == "FINISHED"
    assert parent.data.metrics["data.world.counts.web_A"] == 300 and parent.data.metrics["data.index_B.rows"] == 100
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"train-tuna-stage1", "train-tuna-stage2", "train-baseline-stage1", "train-baseline-stage2",
                             "eval", "export-tuna", "register-tuna", "deploy"}
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert "tuna_finer_ood_fine_em" in children["eval"].data.metrics
    assert children["deploy"].data.metrics["grpc_latency_ms"] > 0
    assert track.latest_good("tuna-smoke-serving", alias="evaluated", cfg=cfg)[0] == "1"
