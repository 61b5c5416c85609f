"""Every KFP component through its ``.python_func`` (the function KFP runs in the pod), with KFP artifact objects.

Data steps run on the session's smoke worlds (the world step for real, the others on their up-to-date path);
training and evaluation are checked for their argument validation and one-line refusals only - the kfp.local
run of the whole pipeline (test_pipeline_local.py) runs them for real.
"""

from __future__ import annotations

import ast
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import COMPONENTS, art, component, out
from support import REPO, SMOKE, World
from tuna.layout import layout
from tuna.recipe import load_recipe

STEPS = ("validate", "start_run", "world", "encoder", "mine_tags", "build_index", "lm", "train", "evaluate",
         "export_model_repository", "register_model", "deploy", "notify")


def one_line_exit(info: pytest.ExceptionInfo[SystemExit], prefix: str) -> str:
    """A task's refusal: SystemExit with one line ``<task>: error: ...``."""
    message = str(info.value.code)
    assert "\n" not in message and message.startswith(f"{prefix}: error: "), message
    return message


# ------------------------------------------------------------------------------------------------ shape of the components


def test_every_step_has_a_component_and_readme() -> None:
    folders = sorted(p.name for p in COMPONENTS.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders == sorted(STEPS)
    for step in STEPS:
        readme = (COMPONENTS / step / "README.md").read_text(encoding="utf-8")
        assert readme.startswith(f"# {step}") and "python_func" not in readme.splitlines()[0]


@pytest.mark.parametrize("step", STEPS)
def test_component_is_thin_lightweight_and_on_the_project_image(step: str) -> None:
    from tuna.kfp.options import BASE_IMAGE

    comp = component(step)
    container = comp.component_spec.implementation.container
    assert container.image == BASE_IMAGE == "ghcr.io/tuna-platform/tuna:0.1.0"
    command = " ".join(container.command + container.args)
    assert "pip install" not in command  # install_kfp_package=False: nothing installed at task start
    assert "kfp.dsl.executor_main" in command  # a lightweight Python component (what kfp.local can run)
    # No ML logic in components/: the module imports kfp and tuna only, the body imports tuna only.
    tree = ast.parse((COMPONENTS / step / "component.py").read_text(encoding="utf-8"))
    top = {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    top |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert top <= {"kfp", "tuna", "typing"}, top
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    inner = {n.module.split(".")[0] for n in ast.walk(func) if isinstance(n, ast.ImportFrom)}
    assert inner <= {"tuna", "collections"}, inner
    loops = [n for n in ast.walk(func) if isinstance(n, (ast.For, ast.While))]
    assert not loops, f"{step}: a loop in a component body is logic; move it into tuna.kfp.tasks"


# ------------------------------------------------------------------------------------------------ validate


def _validate(**changes: Any) -> Any:
    args = {"config": str(SMOKE), "overrides": [], "target": "local", "data_root": "/mnt/tuna",
                "checkpoints_root": "/mnt/tuna-checkpoints", "gpus": 0, "data_pvc": "tuna-data", "checkpoints_pvc": "tuna-checkpoints",
                "mlflow_secret": "", "milvus_secret": "", "s3_secret": "", "launcher": "local",
                "deploy_target": "local", "serving_source": "pvc", "serve_datastore": "", "register_alias": "evaluated",
                "gate_metric": "", "gate_min": 0.0}
    args.update(changes)
    return component("validate").python_func(**args)


def test_validate_local_keeps_the_recipe_as_given() -> None:
    result = _validate(overrides=["run.data_dir=/tmp/x"], serve_datastore="B")
    assert result.overrides == ["run.data_dir=/tmp/x", "serve.datastore=B"]
    assert result.export_root == ""


def test_validate_cluster_puts_data_on_the_pvc_and_names_into_the_recipe() -> None:
    secrets = {"mlflow_secret": "tuna-mlflow", "milvus_secret": "tuna-milvus", "s3_secret": "tuna-s3"}
    # a trainjob build: the training tasks hold no GPU (gpus=0), the TrainJob's pods take the recipe's
    result = _validate(target="kubernetes", deploy_target="helm", launcher="trainjob", gpus=0,
                       overrides=["index.uri=http://milvus.milvus:19530", "cluster.num_nodes=4"], **secrets)
    ov = result.overrides
    assert ov[0] == "index.uri=http://milvus.milvus:19530"
    assert "run.data_dir=/mnt/tuna/data/smoke" in ov  # the recipe's relative data_dir lands on the data PVC
    for item in ("cluster.data_pvc=tuna-data", "cluster.checkpoints_pvc=tuna-checkpoints", "cluster.num_nodes=4",
                 "cluster.mlflow_secret=tuna-mlflow", "cluster.milvus_secret=tuna-milvus", "cluster.s3_secret=tuna-s3",
                 "cluster.data_mount=/mnt/tuna"):
        assert item in ov, item
    assert not [o for o in ov if o.startswith(("cluster.gpus_per_node=", "train.ranks="))]
    assert result.export_root == "/mnt/tuna-checkpoints"
    from tuna.recipe import load_recipe

    cfg = load_recipe(SMOKE, ov)  # the tasks load exactly this
    assert cfg.cluster.num_nodes == 4 and cfg.run.data_dir == "/mnt/tuna/data/smoke"


def test_validate_local_launcher_with_gpus_trains_one_rank_per_gpu_of_the_task() -> None:
    secrets = {"mlflow_secret": "tuna-mlflow", "milvus_secret": "tuna-milvus", "s3_secret": "tuna-s3"}
    result = _validate(target="kubernetes", deploy_target="helm", launcher="local", gpus=8,
                       overrides=["index.uri=http://milvus.milvus:19530"], **secrets)
    assert {"cluster.gpus_per_node=8", "train.ranks=8"} <= set(result.overrides)
    assert not [o for o in result.overrides if o.startswith("cluster.num_nodes=")]  # the recipe's own


CLUSTER = {"target": "kubernetes", "deploy_target": "helm", "mlflow_secret": "tuna-mlflow", "milvus_secret": "tuna-milvus",
               "s3_secret": "tuna-s3", "overrides": ["index.uri=http://milvus:19530"]}


@pytest.mark.parametrize(("changes", "names"), [
    ({"serve_datastore": "C"}, "serve_datastore: unknown datastore 'C'; the recipe declares A, B, A_captions"),
    (dict(CLUSTER, launcher="trainjob", overrides=["cluster.num_nodes=2000"]), "cluster.num_nodes: must be in 1..1024"),
    ({"gpus": 17}, "gpus: 17 is out of range 0..16 (compiled from cluster.gpus_per_node)"),
    ({"launcher": "slurm"}, "launcher: 'slurm' is not one of local, trainjob, pytorchjob"),
    ({"launcher": "trainjob"}, "launcher: 'trainjob' creates jobs on Kubernetes"),
    ({"deploy_target": "helm"}, "deploy_target: helm installs into a Kubernetes cluster"),
    (dict(CLUSTER, deploy_target="local"), "deploy_target: local starts tritonserver inside the task pod"),
    (dict(CLUSTER, mlflow_secret=""), "mlflow_secret: is empty; name the Secret holding MLFLOW_TRACKING_USERNAME"),
    (dict(CLUSTER, s3_secret=""), "s3_secret: is empty"),
    (dict(CLUSTER, milvus_secret=""), "milvus_secret: is empty"),
    (dict(CLUSTER, data_pvc=""), "data_pvc: is empty; name the PersistentVolumeClaim"),
    (dict(CLUSTER, mlflow_secret="Bad_Name"), "cluster.mlflow_secret: must be a Kubernetes object name"),
    (dict(CLUSTER, overrides=[]), "deploy_target: helm serving needs a Milvus server"),
    (dict(CLUSTER, serving_source="mlflow"), "serving_source: mlflow needs an MLflow server"),
    (dict(CLUSTER, overrides=["index.uri=http://m:19530", "run.data_dir=/data/x"]), "run.data_dir: '/data/x' is outside"),
    ({"serving_source": "ftp"}, "serving_source: 'ftp' is not one of pvc, mlflow"),
    ({"register_alias": "latest"}, "register_alias: 'latest' must be"),
    ({"gate_min": float("nan")}, "gate_min: nan must be a finite number"),
    ({"target": "cloud"}, "target: 'cloud' is not one of kubernetes, local"),
    ({"overrides": ["world.taxonomy.ood_fraction=0.9"]}, "world.taxonomy.ood_fraction: 0.9 holds out"),
    ({"overrides": ["world.nope=1"]}, "unknown key 'world.nope'"),
    ({"config": "configs/missing.yaml"}, "config file 'configs/missing.yaml' not found"),
])
def test_validate_refuses_bad_input_in_one_line(changes: dict[str, Any], names: str) -> None:
    with pytest.raises(SystemExit) as info:
        _validate(**changes)
    assert names in one_line_exit(info, "validate")


# ------------------------------------------------------------------------------------------------ data steps


def test_world_writes_its_manifest_and_metadata(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dataset = out("Dataset", tmp_path / "outputs", "dataset")
    component("world").python_func(config=str(SMOKE), overrides=[f"run.data_dir={data}"], dataset=dataset)
    manifest = json.loads(Path(dataset.path).read_text())
    assert manifest["counts"]["web_A"] == 300 and manifest == json.loads((data / "world" / "manifest.json").read_text())
    meta = dataset.metadata
    assert meta["status"] == "generated" and meta["uri"] == str(data / "world") and meta["recipe"] == "smoke"
    assert meta["counts"]["web_B"] == 100 and len(meta["digests"]["text"]) == 64 and meta["fingerprint"]
    again = out("Dataset", tmp_path / "again", "dataset")
    component("world").python_func(config=str(SMOKE), overrides=[f"run.data_dir={data}"], dataset=again)
    assert again.metadata["status"] == "up to date" and again.metadata["digests"] == meta["digests"]


def test_data_steps_publish_provenance_of_a_prepared_run(prepared: World, tmp_path: Path) -> None:
    ov = [f"run.data_dir={prepared.cfg.data_dir}"]
    world = art("Dataset", {"fingerprint": prepared.manifest["fingerprint"]})
    enc = out("Model", tmp_path, "encoder")
    component("encoder").python_func(config=str(SMOKE), overrides=ov, world=world, model=enc)
    assert enc.metadata["status"] == "up to date" and enc.metadata["dim"] == 32
    assert set(enc.metadata["zero_shot_top1"]) >= {"id", "ood"} and len(enc.metadata["encoder_hash"]) == 64
    assert json.loads(Path(enc.path).read_text())["fingerprint"] == enc.metadata["fingerprint"]

    tags = out("Dataset", tmp_path, "tags")
    component("mine_tags").python_func(config=str(SMOKE), overrides=ov, world=world, tags=tags)
    assert tags.metadata["status"] == "up to date" and set(tags.metadata["domains"]) == {"A", "B"}
    assert tags.metadata["domains"]["A"]["count"] + tags.metadata["domains"]["A"]["skipped"] == 300

    index = out("Dataset", tmp_path, "index")
    component("build_index").python_func(config=str(SMOKE), overrides=ov, encoder=enc, tags=tags, index=index,
                                         datastore="A")
    meta = index.metadata
    assert meta["name"] == "A" and meta["rows"] == 292 and meta["encoder"] == enc.metadata["fingerprint"]
    assert meta["uri"].endswith("datastores/A/milvus.db") and meta["status"] == "up to date"
    every = out("Dataset", tmp_path, "every")
    component("build_index").python_func(config=str(SMOKE), overrides=ov, encoder=enc, tags=tags, index=every,
                                         datastore="all")
    assert set(every.metadata["datastores"]) == {"A", "B", "A_captions"}

    lm = out("Model", tmp_path, "lm")
    component("lm").python_func(config=str(SMOKE), overrides=ov, world=world, model=lm)
    assert lm.metadata["status"] == "up to date" and lm.metadata["params"] > 0 and "val_perplexity" in lm.metadata["metrics"]


def test_build_index_refuses_an_unknown_datastore(prepared: World, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        component("build_index").python_func(config=str(SMOKE), overrides=[f"run.data_dir={prepared.cfg.data_dir}"],
                                             encoder=art("Model", {}), tags=art("Dataset", {}),
                                             index=out("Dataset", tmp_path, "index"), datastore="C")
    assert "unknown datastore 'C'; the recipe declares A, B, A_captions" in one_line_exit(info, "build_index C")


def test_start_run_opens_the_parent_run_with_the_data_provenance(mlflow_store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    meta = {"fingerprint": "abc", "counts": {"web_A": 300}, "uri": "/data/world", "status": "generated", "seed": 0}
    inputs = {"world": art("Dataset", meta), "encoder": art("Model", {"dim": 32, "fingerprint": "e1"}),
              "tags": art("Dataset", {"domains": {"A": {"count": 292}}}),
              "datastore": art("Dataset", {"name": "A", "rows": 292}), "lm": art("Model", {"params": 26720})}
    # the other declared datastores are read from their manifests (the task runs after their index tasks)
    b = layout(load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])).datastore("B")
    b.mkdir(parents=True)
    (b / "manifest.json").write_text(json.dumps({"rows": 100, "skipped": 0, "values": "tags", "uri": str(b / "milvus.db")}))
    run_id = component("start_run").python_func(config=str(SMOKE), overrides=[f"run.data_dir={tmp_path}"], **inputs)
    run = MlflowClient(mlflow_store).get_run(run_id)
    assert run.data.tags["tuna.kind"] == "pipeline" and run.data.tags["mlflow.runName"] == "smoke-kfp"
    assert run.data.metrics["data.world.counts.web_A"] == 300 and run.data.metrics["data.index_B.rows"] == 100
    assert run.data.metrics["data.index_A.rows"] == 292 and "data.index_A_captions.rows" not in run.data.metrics  # unbuilt
    assert run.data.tags["tuna.data.world.fingerprint"] == "abc" and run.data.params["world.sizes.web"] == "300"


# ------------------------------------------------------------------------------------------------ training, evaluation


@pytest.mark.parametrize(("stage", "variant", "launcher", "names"), [
    (3, "tuna", "local", "stage: must be 1 or 2, got 3"),
    (1, "tuna", "mpirun", "launcher: 'mpirun' is not one of local, trainjob, pytorchjob"),
    (1, "llava", "local", "unknown variant 'llava'"),
])
def test_train_refuses_bad_arguments_before_starting_ranks(tmp_path: Path, stage: int, variant: str, launcher: str,
                                                           names: str) -> None:
    with pytest.raises(SystemExit) as info:
        component("train").python_func(config=str(SMOKE), overrides=[f"run.data_dir={tmp_path}"], mlflow_parent="",
                                       stage=stage, variant=variant, launcher=launcher, base=art("Model", {}),
                                       datastore=art("Dataset", {}), model=out("Model", tmp_path, "model"))
    assert names in one_line_exit(info, f"train {variant} stage {stage}")
    assert not (tmp_path / "train").exists()


def _untrained(prepared: World, tmp_path: Path) -> Path:
    """A copy of the prepared smoke data without any training (other tests train in ``prepared`` itself)."""
    import shutil

    target = tmp_path / "untrained"
    shutil.copytree(prepared.cfg.data_dir, target, ignore=shutil.ignore_patterns("train", "eval", "serve", "kfp"))
    return target


def test_evaluate_needs_trained_models(prepared: World, tmp_path: Path) -> None:
    data = _untrained(prepared, tmp_path)
    with pytest.raises(SystemExit) as info:
        component("evaluate").python_func(config=str(SMOKE), overrides=[f"run.data_dir={data}"],
                                          mlflow_parent="", tuna_model=art("Model", {"variant": "tuna"}),
                                          baseline_model=art("Model", {"variant": "baseline"}),
                                          metrics=out("Metrics", tmp_path, "metrics"), report=out("Markdown", tmp_path, "report"))
    assert "variant 'tuna' has no trained model" in one_line_exit(info, "evaluate")
    with pytest.raises(SystemExit) as info:
        component("evaluate").python_func(config=str(SMOKE), overrides=[], mlflow_parent="",
                                          tuna_model=art("Model", {"variant": "tuna"}),
                                          baseline_model=art("Model", {"variant": "gpt"}),
                                          metrics=out("Metrics", tmp_path, "m2"), report=out("Markdown", tmp_path, "r2"))
    assert "variants: ['tuna', 'gpt'] must name trained variants" in one_line_exit(info, "evaluate")


def test_export_needs_a_trained_model(prepared: World, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        component("export_model_repository").python_func(
            config=str(SMOKE), overrides=[f"run.data_dir={_untrained(prepared, tmp_path)}"], mlflow_parent="",
            model=art("Model", {"variant": "tuna"}), repository=out("Model", tmp_path, "repository"))
    assert "no trained model at" in one_line_exit(info, "export_model_repository")


# ------------------------------------------------------------------------------------------------ register, deploy, notify


def _repository(tmp_path: Path) -> dict[str, Any]:
    repo = tmp_path / "serve" / "tuna" / "model_repository"
    (repo / "tuna").mkdir(parents=True)
    (repo / "tuna" / "config.pbtxt").write_text('name: "tuna"\nplatform: "ensemble"\n')
    (repo / "tuna" / "1").mkdir()
    return {"variant": "tuna", "path": str(repo), "model_digest": "0123456789abcdef"}


def test_register_model_points_the_alias_at_a_new_version(mlflow_store: str, tmp_path: Path) -> None:
    from tuna import track

    ov = [f"run.data_dir={tmp_path}"]
    metrics = art("Metrics", {"tuna_pope_id_f1": 0.8, "baseline_pope_id_f1": 0.7})
    reg = component("register_model").python_func
    uri = reg(config=str(SMOKE), overrides=ov, mlflow_parent="", repository=art("Model", _repository(tmp_path)),
              metrics=metrics, alias="evaluated", gate_metric="tuna_pope_id_f1", gate_min=0.5)
    assert uri == "models:/tuna-smoke-serving@evaluated"
    version, source = track.latest_good("tuna-smoke-serving", alias="evaluated")
    assert version == "1" and source.endswith("/model_repository")
    files = track.download(source, tmp_path / "fetched")
    assert (files / "tuna" / "config.pbtxt").is_file()  # what the chart's mlflow source downloads
    # The gate: below gate_min nothing is registered and "" comes back.
    assert reg(config=str(SMOKE), overrides=ov, mlflow_parent="", repository=art("Model", _repository(tmp_path / "b")),
               metrics=metrics, alias="evaluated", gate_metric="baseline_pope_id_f1", gate_min=0.75) == ""
    assert track.latest_good("tuna-smoke-serving", alias="evaluated")[0] == "1"
    with pytest.raises(SystemExit) as info:
        reg(config=str(SMOKE), overrides=ov, mlflow_parent="", repository=art("Model", _repository(tmp_path / "c")),
            metrics=metrics, alias="evaluated", gate_metric="tuna_mme_total", gate_min=0.0)
    assert "gate_metric: 'tuna_mme_total' is not among the evaluation metrics" in one_line_exit(info, "register_model")


def test_register_model_refuses_a_folder_without_the_ensemble(mlflow_store: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        component("register_model").python_func(config=str(SMOKE), overrides=[f"run.data_dir={tmp_path}"],
                                                mlflow_parent="", repository=art("Model", {"path": str(tmp_path)}),
                                                metrics=art("Metrics", {}))
    assert "holds no Triton ensemble" in one_line_exit(info, "register_model")


def _deploy(tmp_path: Path, **changes: Any) -> str:
    args = {"config": str(SMOKE), "overrides": [f"run.data_dir={tmp_path}", "index.uri=http://milvus.milvus:19530"],
                "mlflow_parent": "", "repository": art("Model", {"variant": "tuna",
                                                           "path": "/mnt/tuna-checkpoints/smoke/serve/tuna/model_repository"}),
                "target": "helm", "registered": "", "serving_source": "pvc", "chart": str(REPO / "helm" / "tuna-serving"),
                "release": "tuna-serving",
                "namespace": "tuna", "values_files": [], "repository_pvc": "tuna-checkpoints",
                "repository_mount": "/mnt/tuna-checkpoints"}
    args.update(changes)
    return component("deploy").python_func(**args)


def test_deploy_helm_runs_helm_upgrade_with_the_repository_on_its_pvc(tmp_path: Path, mlflow_store: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tuna.kube import binaries

    calls: list[list[str]] = []
    monkeypatch.setattr(binaries, "helm_binary", lambda: Path("/opt/helm"))
    monkeypatch.setattr(binaries, "run_tool", lambda binary, args, **kw: calls.append([str(binary), *args]) or "STATUS: deployed")
    line = _deploy(tmp_path)
    assert line == "helm release tuna/tuna-serving serves pvc://tuna-checkpoints/smoke/serve/tuna/model_repository"
    (cmd,) = calls
    assert cmd[:4] == ["/opt/helm", "upgrade", "--install", "tuna-serving"]
    assert "modelRepository.pvc.claimName=tuna-checkpoints" in cmd
    assert "modelRepository.pvc.subPath=smoke/serve/tuna/model_repository" in cmd
    # From the registry instead: the register_model output names the version.
    calls.clear()
    _deploy(tmp_path, serving_source="mlflow",
            registered="models:/tuna-smoke-serving@evaluated",
            overrides=[f"run.data_dir={tmp_path}", "index.uri=http://milvus:19530", "track.tracking_uri=http://mlflow.tuna:5000"])
    assert "modelRepository.mlflow.alias=evaluated" in calls[0] and "modelRepository.source=mlflow" in calls[0]


@pytest.mark.parametrize(("changes", "names"), [
    ({"target": "k8s"}, "target: 'k8s' is not one of local, helm, none"),
    ({"overrides": []}, "index.uri is null"),
    ({"serving_source": "mlflow"}, "serving_source=mlflow but no model version was registered"),
    ({"repository": art("Model", {"path": "/data/elsewhere/model_repository"})}, "is not under '/mnt/tuna-checkpoints'"),
    ({"chart": "/nonexistent/chart"}, "chart '/nonexistent/chart' has no Chart.yaml"),
])
def test_deploy_refuses_in_one_line(tmp_path: Path, changes: dict[str, Any], names: str) -> None:
    with pytest.raises(SystemExit) as info:
        _deploy(tmp_path, **changes)
    assert names in one_line_exit(info, "deploy")


def test_deploy_none_does_nothing(tmp_path: Path) -> None:
    assert _deploy(tmp_path, target="none") == "deploy skipped (deploy_target=none)"


def test_notify_records_the_status_cleans_up_and_posts(tmp_path: Path) -> None:
    from kfp import dsl

    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "serve" / "tuna.tmp").mkdir(parents=True)  # a killed export's leftovers
    status = dsl.PipelineTaskFinalStatus(state="FAILED", pipeline_job_resource_name="runs/42", pipeline_task_name="exit-handler-1",
                                         error_code=1, error_message="Task train-2 failed.")
    try:
        line = component("notify").python_func(config=str(SMOKE), overrides=[f"run.data_dir={tmp_path}"], status=status,
                                               data_root="", target="local",
                                               webhook=f"http://127.0.0.1:{server.server_port}/hook")
    finally:
        server.shutdown()
    assert line == "pipeline runs/42: FAILED (Task train-2 failed.)"
    record = json.loads((tmp_path / "kfp" / "status.jsonl").read_text().splitlines()[-1])
    assert record["state"] == "FAILED" and record["job"] == "runs/42"
    assert not (tmp_path / "serve" / "tuna.tmp").exists()
    assert received and received[0]["text"] == line
    # Never fails on its own account: a recipe that does not load, a dead webhook.
    again = component("notify").python_func(config="configs/missing.yaml", overrides=[], status=status,
                                            webhook="http://127.0.0.1:9/none")
    assert again.startswith("pipeline runs/42: FAILED")
