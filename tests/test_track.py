"""MLflow tracking through tuna.track against the REAL MLflow: sqlite stores in tmp, a real `mlflow server`, `tuna ui`.

Everything written through track.py is read back with MLflow's own client (no mocks).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from support import SMOKE
from tuna import track
from tuna.cli import main
from tuna.errors import TunaError
from tuna.recipe import Recipe, load_recipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI, parent run or rank leaks in from the caller's shell."""
    for name in (track.TRACKING_URI_ENV, track.PARENT_RUN_ENV, track.INJECTED_RUN_ENV, "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store with its schema created once (the migrations take seconds; copying takes none)."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture()
def cfg(tmp_path: Path, empty_db: Path) -> Recipe:
    """The smoke recipe with its default sqlite store (a fresh copy of ``empty_db``) under tmp_path."""
    store = tmp_path / "data" / "mlflow"
    store.mkdir(parents=True)
    shutil.copy(empty_db, store / "mlflow.db")
    return load_recipe(SMOKE, [f"run.data_dir={tmp_path / 'data'}"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(cfg: Recipe) -> MlflowClient:
    uri = track.tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, recursively."""
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _hf_folder(root: Path) -> Path:
    """A folder shaped like save_pretrained output (config.json + weights file)."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    return root


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 90.0) -> float:
    """Poll ``url`` until HTTP 200; returns seconds waited. Fails with the server log if it dies or never answers."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer 200 within {seconds:.0f}s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Stop a server we started: signal it, wait, and kill its own process group only if it hangs."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


# ---------------------------------------------------------------- resolution and params

def test_tracking_uri_default_recipe_and_env(cfg: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    store = cfg.data_dir.resolve() / "mlflow"
    assert track.tracking_uri(cfg) == f"sqlite:///{store / 'mlflow.db'}"
    assert track.artifact_location(cfg, track.tracking_uri(cfg)) == (store / "artifacts").as_uri()
    remote = load_recipe(SMOKE, ["track.tracking_uri=http://mlflow.tuna.svc:5000"])
    assert track.tracking_uri(remote) == "http://mlflow.tuna.svc:5000"
    assert track.artifact_location(remote, "http://mlflow.tuna.svc:5000") is None  # the server's default
    monkeypatch.setenv(track.TRACKING_URI_ENV, "sqlite:////elsewhere/x.db")
    assert track.tracking_uri(cfg) == "sqlite:////elsewhere/x.db"  # the environment beats the recipe
    monkeypatch.delenv(track.TRACKING_URI_ENV)
    with pytest.raises(TunaError, match="MLFLOW_TRACKING_URI"):
        track.tracking_uri(None)


def test_flatten_dotted_keys_and_value_limit() -> None:
    flat = track.flatten({"world": {"sizes": {"web": 500}, "objects_per_image": [1, 4]},
                          "model": {"vision_tower": None, "tuner": True, "note": "x" * 900}})
    assert flat["world.sizes.web"] == "500"
    assert flat["world.objects_per_image"] == "[1, 4]"
    assert flat["model.vision_tower"] == "null" and flat["model.tuner"] == "true"
    assert len(flat["model.note"]) == track.PARAM_VALUE_LIMIT and flat["model.note"].endswith("...")


# ---------------------------------------------------------------- runs against a real sqlite store

def test_pipeline_and_stage_runs_read_back(cfg: Recipe, tmp_path: Path) -> None:
    ds_config = tmp_path / "zero2.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 8}))
    report = tmp_path / "report"
    report.mkdir()
    (report / "pope.json").write_text("{}")
    losses = [(s, 3.0 / (1 + s)) for s in range(1, 31)]

    with track.pipeline_run(cfg, name="smoke-test") as parent:
        assert os.environ[track.PARENT_RUN_ENV] == parent.run_id
        with track.stage_run("stage1", cfg) as stage:
            stage.log_params({"deepspeed": {"zero_stage": 2}, "grid": {f"k{i:03d}": i for i in range(250)}})
            for step, loss in losses:
                stage.log_metrics({"loss": loss, "lr": 1e-3, "step_time_s": 0.3, "samples_per_s": 26.7}, step=step)
            stage.log_artifact(ds_config, "deepspeed")
            stage.log_artifact(report)
            assert stage.log_loss_curve(losses) == "plots/loss_curve.png"
    assert track.PARENT_RUN_ENV not in os.environ and track.TRACKING_URI_ENV not in os.environ  # restored

    client = _client(cfg)
    p, s = client.get_run(parent.run_id), client.get_run(stage.run_id)
    assert (p.info.status, s.info.status) == ("FINISHED", "FINISHED")
    assert p.info.run_name == "smoke-test" and p.data.tags["tuna.recipe"] == cfg.run.name
    assert p.data.tags["tuna.version"] and p.data.tags.get("tuna.git_sha", "x")
    assert s.data.tags["mlflow.parentRunId"] == parent.run_id and s.info.experiment_id == p.info.experiment_id
    exp = client.get_experiment(p.info.experiment_id)
    assert exp.name == cfg.track.experiment
    assert exp.artifact_location == (cfg.data_dir.resolve() / "mlflow" / "artifacts").as_uri()

    params = p.data.params
    assert params["world.sizes.web"] == str(cfg.world.sizes.web)
    assert params["track.experiment"] == cfg.track.experiment
    assert params["world.objects_per_image"] == json.dumps(list(cfg.world.objects_per_image))
    assert len(params) == len(track.flatten(cfg.to_dict()))
    assert s.data.params["deepspeed.zero_stage"] == "2"
    assert len(s.data.params) == 251 > 2 * track.PARAMS_PER_BATCH and s.data.params["grid.k249"] == "249"  # 3 batches

    history = client.get_metric_history(stage.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == losses
    assert {"lr", "step_time_s", "samples_per_s"} <= set(s.data.metrics)

    assert "recipe.yaml" in _artifacts(client, parent.run_id)
    assert _artifacts(client, stage.run_id) == {"deepspeed/zero2.json", "report/pope.json", "plots/loss_curve.png"}
    png = Path(client.download_artifacts(stage.run_id, "plots/loss_curve.png", str(tmp_path / "dl")))
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_loss_curve_png(tmp_path: Path) -> None:
    out = track.loss_curve_png([(0, 2.0), (5, 1.0), (10, 0.5)], tmp_path / "plots" / "loss.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no \\(step, loss\\) points"):
        track.loss_curve_png([], tmp_path / "empty.png")


def test_stage_in_subprocess_attaches_to_parent_by_env(cfg: Recipe) -> None:
    """A stage run by another process (a verb, DeepSpeed rank 0) nests under the parent via the exported env."""
    child = textwrap.dedent("""
        from tuna import track
        with track.stage_run("stage2") as run:
            for step in range(1, 4):
                run.log_metrics({"loss": 1.0 / step}, step=step)
        print(run.run_id)
    """)
    with track.pipeline_run(cfg) as parent:
        proc = subprocess.run([sys.executable, "-c", child], check=False, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    child_id = proc.stdout.strip().splitlines()[-1]
    client = _client(cfg)
    run = client.get_run(child_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(child_id, "loss")] == [1, 2, 3]


def test_other_ranks_do_not_log(cfg: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    with track.stage_run("stage1", cfg) as run:
        run.log_metrics({"loss": 1.0}, step=1)
    assert run.run_id is None and not run.enabled
    assert not _client(cfg).search_runs([e.experiment_id for e in _client(cfg).search_experiments()])


def test_exception_ends_runs_failed(cfg: Recipe) -> None:
    with pytest.raises(RuntimeError, match="boom"), track.pipeline_run(cfg) as parent, track.stage_run("stage1") as stage:
        stage.log_metrics({"loss": 1.0}, step=1)
        raise RuntimeError("boom")
    client = _client(cfg)
    s, p = client.get_run(stage.run_id), client.get_run(parent.run_id)
    assert (s.info.status, p.info.status) == ("FAILED", "FAILED")
    assert s.data.tags["tuna.error"] == "RuntimeError: boom"
    assert [m.value for m in client.get_metric_history(stage.run_id, "loss")] == [1.0]  # flushed before ending
    with pytest.raises(KeyboardInterrupt), track.stage_run("stage2", cfg) as interrupted:
        raise KeyboardInterrupt
    assert client.get_run(interrupted.run_id).info.status == "KILLED"


def test_stage_without_parent_or_recipe_is_refused() -> None:
    with pytest.raises(TunaError, match="MLFLOW_TRACKING_URI"), track.stage_run("stage1"):
        pass


def test_register_model_alias_and_latest_good(cfg: Recipe, tmp_path: Path) -> None:
    name = cfg.track.registered_model
    with pytest.raises(TunaError, match="has no version with alias 'latest-good'"):
        track.latest_good(name, cfg=cfg)
    versions = []
    for i in range(2):
        with track.stage_run("stage2", cfg) as run:
            run.log_model_folder(_hf_folder(tmp_path / f"hf{i}"))
        versions.append(track.register_model(run.run_id, "model", name, cfg=cfg))
    assert versions == ["1", "2"]
    version, source = track.latest_good(name, cfg=cfg)
    assert version == "2" and source.endswith(f"{run.run_id}/artifacts/model")
    assert _client(cfg).get_model_version_by_alias(name, "latest-good").run_id == run.run_id
    local = track.download(source, tmp_path / "fetched", cfg=cfg)
    assert (local / "config.json").is_file()
    with pytest.raises(TunaError, match="no artifacts at 'weights'"):
        track.register_model(run.run_id, "weights", name, cfg=cfg)
    with pytest.raises(TunaError, match="no config.json"):
        run.log_model_folder(tmp_path)


# ---------------------------------------------------------------- bad tracking servers

def test_unreachable_server_is_one_line_error(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"  # nobody listens there
    bad = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", f"track.tracking_uri={uri}"])
    with pytest.raises(TunaError) as err, track.pipeline_run(bad):
        pass
    message = str(err.value)
    assert "\n" not in message and uri in message and "unreachable" in message and "tracking_uri" in message


def test_ui_refuses_a_server_store(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ui", "--config", str(SMOKE), "track.tracking_uri=http://mlflow.tuna.svc:5000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "http://mlflow.tuna.svc:5000" in err and "open that server's own URL" in err


def test_ui_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["ui", "--help"])
    assert exit_.value.code == 0 and "--port" in capsys.readouterr().out


# ---------------------------------------------------------------- real servers

@pytest.fixture()
def mlflow_server(tmp_path: Path, empty_db: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (sqlite + served local artifacts), stopped by PID at the end."""
    shutil.copy(empty_db, tmp_path / "server.db")
    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "served"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/health", proc, log)
        yield url
    finally:
        _stop(proc)


@pytest.mark.integration
def test_runs_over_http_to_a_real_server(mlflow_server: str, tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path / 'client'}", f"track.tracking_uri={mlflow_server}"])
    with track.pipeline_run(cfg) as parent, track.stage_run("stage1") as stage:
        for step in range(1, 6):
            stage.log_metrics({"loss": 2.0 - 0.1 * step, "samples_per_s": 30.0}, step=step)
        stage.log_loss_curve([(i, 2.0 - 0.1 * i) for i in range(1, 6)])
        stage.log_model_folder(_hf_folder(tmp_path / "hf"))
    version = track.register_model(stage.run_id, "model", cfg.track.registered_model, cfg=cfg)
    assert track.latest_good(cfg.track.registered_model, cfg=cfg)[0] == version == "1"

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    s = client.get_run(stage.run_id)
    assert s.info.status == "FINISHED" and s.data.tags["mlflow.parentRunId"] == parent.run_id
    assert s.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    assert client.get_run(parent.run_id).data.params["world.sizes.web"] == str(cfg.world.sizes.web)
    assert [m.step for m in client.get_metric_history(stage.run_id, "loss")] == [1, 2, 3, 4, 5]
    assert {"plots/loss_curve.png", "model/config.json", "model/model.safetensors"} <= _artifacts(client, stage.run_id)
    assert not (tmp_path / "client" / "mlflow").exists()  # nothing written to the local default store


@pytest.mark.integration
def test_tuna_ui_serves_http_and_stops_on_sigint(cfg: Recipe, tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "tuna-ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tuna.cli", "ui", "--config", str(SMOKE),
                                 f"run.data_dir={cfg.data_dir}", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, log)
    finally:
        code = _stop(proc, signal.SIGINT)
    text = log.read_text()
    assert code == 0, text
    assert f"http://127.0.0.1:{port}" in text and "MLflow UI stopped" in text
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # fails only while something listens
        s.bind(("127.0.0.1", port))  # the server is gone: the port is free again


# ------------------------------------------------------------------ KFP 2.17's MLflow plugin (MLFLOW_RUN_ID injected)


def _plugin_runs(cfg: Recipe, monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, str, str]:
    """What KFP's MLflow plugin leaves for a task: a run for the pipeline, a nested run for the task (both
    RUNNING), ``MLFLOW_RUN_ID`` = the task's run and ``MLFLOW_TRACKING_URI`` = the store."""
    uri = track.tracking_uri(cfg)
    client = MlflowClient(uri)
    exp = client.create_experiment("kfp-plugin", artifact_location=(cfg.data_dir / "plugin-artifacts").resolve().as_uri())
    pipeline = client.create_run(exp, run_name="tuna-run-1").info.run_id
    task = client.create_run(exp, run_name="evaluate", tags={"mlflow.parentRunId": pipeline}).info.run_id
    monkeypatch.setenv(track.TRACKING_URI_ENV, uri)
    monkeypatch.setenv(track.INJECTED_RUN_ENV, task)
    return client, pipeline, task


def test_under_the_kfp_plugin_tasks_log_into_its_runs_and_open_no_top_level_run(
        cfg: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    client, pipeline, task = _plugin_runs(cfg, monkeypatch)
    exp = client.get_run(task).info.experiment_id

    with track.pipeline_run(cfg, name="smoke-kfp") as parent:   # start_run: the recipe goes to the pipeline run
        assert parent.run_id == pipeline
    with track.task_run("eval", cfg, parent_run_id=pipeline) as run:  # a task's own numbers: into its run
        assert run.run_id == task
        run.log_metrics({"tuna_pope_id_f1": 0.5})
    with track.stage_run("train-tuna-stage1", cfg) as stage:    # a rank's stage run: nested under the task's run
        stage.log_metrics({"loss": 2.0}, step=1)

    runs = {r.info.run_id: r for r in client.search_runs([exp])}
    assert set(runs) == {pipeline, task, stage.run_id}             # nothing else, and nothing top-level of ours
    assert runs[pipeline].data.params["run.name"] == "smoke" and runs[pipeline].data.tags["tuna.kind"] == "pipeline"
    assert runs[task].data.metrics == {"tuna_pope_id_f1": 0.5} and runs[task].data.tags["tuna.stage"] == "eval"
    assert runs[stage.run_id].data.tags["mlflow.parentRunId"] == task
    assert runs[stage.run_id].info.status == "FINISHED"
    assert runs[pipeline].info.status == runs[task].info.status == "RUNNING"  # the plugin ends its own runs


def test_under_the_kfp_plugin_a_failing_task_tags_its_run_and_leaves_it_to_the_plugin(
        cfg: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _pipeline, task = _plugin_runs(cfg, monkeypatch)
    with pytest.raises(TunaError), track.task_run("eval", cfg):
        raise TunaError("no model")
    run = client.get_run(task)
    assert run.data.tags["tuna.error"] == "TunaError: no model" and run.info.status == "RUNNING"


def test_an_injected_run_missing_from_the_store_is_one_line(cfg: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(track.INJECTED_RUN_ENV, "0123abcd")
    uri = track.tracking_uri(cfg)
    with pytest.raises(TunaError) as err, track.task_run("eval", cfg):
        pass
    assert str(err.value) == (f"MLFLOW_RUN_ID=0123abcd (set by KFP's MLflow plugin) is not in {uri}; point "
                              f"MLFLOW_TRACKING_URI at the plugin's MLflow server or unset MLFLOW_RUN_ID")


def test_under_the_kfp_plugin_training_and_trainjobs_nest_under_the_task_run(
        cfg: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from tuna.kfp.tasks import _nested_under
    from tuna.train.cluster import launch

    monkeypatch.setenv(track.INJECTED_RUN_ENV, "task-run-7")
    with _nested_under(cfg, "our-parent"):
        assert os.environ[track.PARENT_RUN_ENV] == "task-run-7"
    monkeypatch.delenv(track.PARENT_RUN_ENV, raising=False)
    monkeypatch.setenv(track.TRACKING_URI_ENV, "http://mlflow.kubeflow.svc:5000")
    shown: list[str] = []
    job_cfg = load_recipe(SMOKE, ["run.data_dir=/mnt/tuna/smoke"])  # on the data PVC, as a cluster run is
    assert job_cfg.track.tracking_uri is None and job_cfg.cluster.mlflow_tracking_uri is None
    assert launch(job_cfg, 1, "tuna", launcher="trainjob", dry_run=True, echo=shown.append) == "DryRun"
    (job,) = [d for d in yaml.safe_load_all(shown[0]) if d and d.get("kind") == "TrainJob"]
    env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
    assert env[track.PARENT_RUN_ENV] == "task-run-7" and env["MLFLOW_TRACKING_URI"] == "http://mlflow.kubeflow.svc:5000"
