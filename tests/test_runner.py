"""`tuna run` end to end on the smoke recipe: every step for real, one MLflow parent run, a nested run per step."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuna.cli import main
from tuna.recipe import load_recipe
from tuna.runner import run_all
from tuna.steps import run_steps
from tuna.track import tracking_uri

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
pytestmark = pytest.mark.integration


def test_run_chain_tracks_every_step_and_skips_when_up_to_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    first = run_all(cfg, progress=False, log=lambda s: None)
    assert [r.name for r in first] == [s.name for s in run_steps()] == ["world", "encoder", "mine", "index", "lm", "train", "eval",
                                                                 "serve"]
    assert all(r.summary != "up to date" for r in first)
    for sub in ("world/manifest.json", "encoder/manifest.json", "tags/A/tags.parquet",
                "datastores/A/manifest.json", "datastores/B/manifest.json", "datastores/A_captions/manifest.json",
                "lm/manifest.json", "train/tuna/stage2/model/config.json", "train/baseline/stage2/model/config.json",
                "eval/tuna/metrics.json", "eval/baseline/metrics.json", "eval/table.md",
                "serve/tuna/model_repository/tuna/config.pbtxt", "serve/tuna/export.json"):
        assert (tmp_path / sub).exists(), sub

    client = MlflowClient(tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.track.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tuna.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {"world", "encoder", "mine", "index", "lm", "plan", "train", "eval", "serve", "train-tuna-stage1",
                             "train-tuna-stage2", "train-baseline-stage1", "train-baseline-stage2"}  # ranks' runs nest under the pipeline
    assert children["plan"].data.metrics["params_total"] > 0
    assert children["world"].data.metrics["web_A"] == 300
    assert children["index"].data.metrics["A_rows"] == 292
    assert "zero_shot_top1_ood" in children["encoder"].data.metrics
    assert parents[0].data.params["world.sizes.web"] == "300"
    # The eval step's run holds the report (markdown, figures, flat metrics) and the headline numbers.
    logged = {a.path for a in client.list_artifacts(children["eval"].info.run_id, "report")}
    assert {"report/report.md", "report/metrics.json", "report/headline.png"} <= logged
    assert "tuna_finer_ood_fine_em" in children["eval"].data.metrics
    # The serve step asked the exported model one question through a real tritonserver over gRPC.
    assert children["serve"].data.metrics["grpc_latency_ms"] > 0
    assert "gRPC answer" in children["serve"].data.tags["tuna.summary"]

    # Second run: nothing changed, so every step is skipped but the live serving check; the CLI prints the table.
    assert main(["run", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == len(run_steps()) - 1 and "gRPC answer" in out
    assert "| tuna |" in out and out.rstrip().endswith(f"report: {tmp_path / 'eval' / 'report' / 'report.md'}")
