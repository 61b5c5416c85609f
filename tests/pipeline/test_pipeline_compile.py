"""The compiled pipeline: versioning, the golden IR, the DAG, its Kubernetes settings (from the recipe's cluster:
section), submit, the CLI verb."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import GOLDEN, load_ir, tasks_by_display_name
from support import CONFIGS, REPO, SMOKE
from tuna.cli import main
from tuna.kfp.compile import compile_pipeline, pipeline_version
from tuna.kfp.options import GOLDEN_VERSION, PipelineError, PipelineOptions
from tuna.kfp.submit import submit
from tuna.recipe import ClusterConfig, load_recipe

REFRESH = ("the pipeline IR changed; if that is intended, refresh the golden copy with\n"
           "    .venv/bin/tuna pipeline compile --version golden\n"
           "(writes pipelines/compiled/tuna-golden.yaml) and commit it with the change")
DATA = ("world", "encoder", "mine-tags", "index-A", "index-B", "index-A-captions", "lm")
TRAIN = ("train-tuna-stage1", "train-tuna-stage2", "train-baseline-stage1", "train-baseline-stage2")
LATER = ("start-run", *TRAIN, "evaluate", "export", "register", "deploy")
LLAVA = CONFIGS / "llava7b.yaml"  # the cluster recipe: trainjob launcher, 8 GPUs per node, an A100 node pool
# a local-launcher GPU recipe: 4 GPUs per training pod on its own node pool, with its own taint
LOCAL_GPU = [f"cluster.{k}" for k in ("gpus_per_node=4", "node_selector={pool: a100-80g}",
                                      "tolerations=[{key: gpu-pool, operator: Equal, value: 'yes', effect: NoExecute}]")]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("compiled"), GOLDEN_VERSION)


@pytest.fixture(scope="module")
def compiled_local_gpu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cluster = load_recipe(SMOKE, LOCAL_GPU).cluster
    assert cluster.launcher == "local"
    return compile_pipeline(tmp_path_factory.mktemp("compiled-local-gpu"), "0.1.0+test", cluster)


@pytest.fixture(scope="module")
def compiled_trainjob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cluster = load_recipe(LLAVA).cluster
    assert cluster.launcher == "trainjob" and cluster.gpus_per_node == 8 and cluster.node_selector
    return compile_pipeline(tmp_path_factory.mktemp("compiled-trainjob"), "0.1.0+test", cluster)


def _without_sdk_version(ir: bytes) -> bytes:
    """The IR minus its ``sdkVersion: kfp-X.Y.Z`` line: the golden copy is about our pipeline, not the SDK's patch number."""
    return re.sub(rb"(?m)^sdkVersion: kfp-[^\n]*\n", b"", ir)


def test_fresh_compile_matches_the_golden_ir_byte_for_byte(compiled: Path) -> None:
    assert compiled.name == "tuna-golden.yaml"
    assert GOLDEN.is_file(), REFRESH
    fresh, golden = compiled.read_bytes(), GOLDEN.read_bytes()
    assert re.search(rb"(?m)^sdkVersion: kfp-2\.17\.", fresh), "the IR no longer names the kfp 2.17 SDK"
    assert _without_sdk_version(fresh) == _without_sdk_version(golden), REFRESH


def test_golden_comparison_ignores_only_the_sdk_patch_number() -> None:
    golden = GOLDEN.read_bytes()
    other_sdk = re.sub(rb"sdkVersion: kfp-[^\n]*", b"sdkVersion: kfp-2.17.99", golden)
    assert _without_sdk_version(other_sdk) == _without_sdk_version(golden)
    changed = golden.replace(b"tuna", b"tunb", 1)
    assert _without_sdk_version(changed) != _without_sdk_version(golden)


def test_compile_is_deterministic_and_versioned(tmp_path: Path, compiled: Path) -> None:
    again = compile_pipeline(tmp_path, GOLDEN_VERSION)
    assert again.read_bytes() == compiled.read_bytes()
    version = pipeline_version()
    assert re.fullmatch(r"0\.1\.0\+([0-9a-f]{7}(\.dirty)?|unknown)", version), version
    path = compile_pipeline(tmp_path, version)
    assert path.name == f"tuna-{version}.yaml"
    spec, _ = load_ir(path)
    assert spec["pipelineInfo"]["name"] == "tuna" and version in spec["pipelineInfo"]["description"]


def test_dag_order_and_dependencies(compiled: Path) -> None:
    spec, _ = load_ir(compiled)
    tasks = tasks_by_display_name(spec)
    assert set(tasks) >= {"validate", *DATA, *LATER, "notify", "tuna-run"}

    def deps(name: str) -> set[str]:
        names = {k: n for n, (k, _) in tasks.items()}
        return {names[d] for d in tasks[name][1].get("dependentTasks", [])}

    def upstream(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            for d in deps(todo.pop()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    assert deps("validate") == set()  # the first task: everything else waits for it
    for name in (*DATA, *LATER):
        assert "validate" in upstream(name), name
    assert deps("encoder") >= {"world"} and deps("index-A") >= {"encoder", "mine-tags"}
    assert {"index-A", "index-B", "index-A-captions", "lm"} <= deps("start-run")
    assert deps("train-tuna-stage1") >= {"start-run", "lm", "index-A"}
    assert "train-tuna-stage1" in deps("train-tuna-stage2") and "train-baseline-stage1" in deps("train-baseline-stage2")
    assert deps("evaluate") >= {"train-tuna-stage2", "train-baseline-stage2", "index-B", "index-A-captions"}
    assert deps("export") >= {"evaluate", "train-tuna-stage2"}
    assert deps("register") >= {"export", "evaluate"} and deps("deploy") >= {"export", "register"}
    assert not {n for n in (*DATA, *LATER) if n.startswith("train")} & upstream("index-A")  # no training before data
    # The exit handler: notify runs when the body (tuna-run) ends, however it ended.
    _, notify = tasks["notify"]
    assert notify["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert notify["dependentTasks"] == [tasks["tuna-run"][0]]
    assert "taskFinalStatus" in str(notify["inputs"])


def test_caching_is_on_for_data_steps_only(compiled: Path) -> None:
    spec, _ = load_ir(compiled)
    tasks = tasks_by_display_name(spec)
    for name in DATA:
        assert tasks[name][1]["cachingOptions"].get("enableCache") is True, name
    for name in ("validate", *LATER, "notify"):
        assert not tasks[name][1].get("cachingOptions", {}).get("enableCache"), name


def _executor(spec: dict[str, Any], platform: dict[str, Any], name: str) -> dict[str, Any]:
    _, task = tasks_by_display_name(spec)[name]
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return platform["deploymentSpec"]["executors"].get(label, {})


def test_pvcs_secrets_and_labels_in_the_platform_spec(compiled: Path) -> None:
    spec, platform = load_ir(compiled)
    # validate reads the declared data and checkpoint configs before any other task: the data PVC, no Secrets
    assert [m["mountPath"] for m in _executor(spec, platform, "validate")["pvcMount"]] == ["/mnt/tuna"]
    assert "secretAsEnv" not in _executor(spec, platform, "validate")
    for name in (*DATA, *LATER, "notify", "validate"):  # every task: the image's non-root user (namespace warns on restricted)
        assert _executor(spec, platform, name)["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000",
                                                                      "runAsNonRoot": True}, name
    for name in (*DATA, *LATER, "notify"):
        ex = _executor(spec, platform, name)
        mounts = {m["mountPath"]: m["pvcNameParameter"]["componentInputParameter"] for m in ex["pvcMount"]}
        assert mounts["/mnt/tuna"].endswith("data_pvc"), name
        wants_ckpt = name.startswith("train") or name in ("export", "register")
        assert ("/mnt/tuna-checkpoints" in mounts) == wants_ckpt, name
        assert ex["podMetadata"]["labels"] == {"app.kubernetes.io/part-of": "tuna", "app.kubernetes.io/component": "pipeline"}
        secrets = {s["secretNameParameter"]["componentInputParameter"].split("--")[-1]: s for s in ex.get("secretAsEnv", [])}
        if name == "notify":
            assert not secrets
            continue
        assert {"mlflow_secret", "milvus_secret", "s3_secret"} <= set(secrets), name
        env = {e["envVar"] for s in ex["secretAsEnv"] for e in s["keyToEnv"]}
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "MILVUS_TOKEN"} <= env
    params = spec["root"]["inputDefinitions"]["parameters"]
    for secret in ("mlflow_secret", "milvus_secret", "s3_secret"):
        assert params[secret]["parameterType"] == "STRING"  # pipeline parameters, checked by validate
    assert params["overrides"]["parameterType"] == "LIST" and params["config"]["defaultValue"] == "configs/mini.yaml"


def _resources(spec: dict[str, Any], name: str) -> dict[str, Any]:
    _, task = tasks_by_display_name(spec)[name]
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"].get("resources", {})


def _constant(spec: dict[str, Any], name: str, parameter: str) -> Any:
    _, task = tasks_by_display_name(spec)[name]
    return task["inputs"]["parameters"][parameter]["runtimeValue"]["constant"]


def test_default_build_requests_no_accelerator_and_trains_in_the_task(compiled: Path) -> None:
    spec, platform = load_ir(compiled)
    for name in (*DATA, *LATER):
        ex = _executor(spec, platform, name)
        assert "accelerator" not in _resources(spec, name) and "nodeSelector" not in ex and "tolerations" not in ex, name
    assert all(_constant(spec, name, "launcher") == "local" for name in TRAIN)
    assert _constant(spec, "validate", "gpus") == 0
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "launcher" not in params and "train_nodes" not in params  # from the recipe now, not run parameters


def test_local_launcher_puts_exactly_the_recipes_gpus_node_pool_and_taints_on_training_tasks(compiled_local_gpu: Path) -> None:
    spec, platform = load_ir(compiled_local_gpu)
    CLUSTER = load_recipe(SMOKE, LOCAL_GPU).cluster  # noqa: N806
    for name in (*DATA, *LATER):
        resources, ex = _resources(spec, name), _executor(spec, platform, name)
        if name in TRAIN:
            accelerator = resources["accelerator"]
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "4"), name
            assert ex["nodeSelector"]["labels"] == {"pool": "a100-80g"}, name
            assert ex["tolerations"] == [{"key": "gpu-pool", "operator": "Equal", "value": "yes", "effect": "NoExecute"}]
            assert _constant(spec, name, "launcher") == "local"
            # the ranks' CPU / memory (requests = limits) and a memory-backed /dev/shm, all from cluster:
            assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == (CLUSTER.cpu, CLUSTER.cpu), name
            assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == (CLUSTER.memory,) * 2
            assert ex["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": CLUSTER.shm_size,
                                             "volumeName": "dshm"}], name
        else:
            assert "accelerator" not in resources and "nodeSelector" not in ex and "tolerations" not in ex, name
            assert "resourceCpuLimit" not in resources and "emptyDirMounts" not in ex, name
    assert _constant(spec, "validate", "gpus") == 4  # -> cluster.gpus_per_node=4, train.ranks=4 for every task
    assert _constant(spec, "export", "trtllm") is True
    assert "4 x nvidia.com/gpu per training task" in spec["pipelineInfo"]["description"]
    assert compiled_local_gpu.name.startswith("tuna-0.1.0+test-local-gpu4-")


def test_trainjob_launcher_requests_no_accelerator_anywhere(compiled_trainjob: Path) -> None:
    spec, platform = load_ir(compiled_trainjob)
    for name in (*DATA, *LATER, "validate", "notify"):
        ex = _executor(spec, platform, name)
        assert "accelerator" not in _resources(spec, name), name  # the TrainJob's pods hold the GPUs, not the task
        assert "nodeSelector" not in ex and "tolerations" not in ex, name
        assert "resourceMemoryLimit" not in _resources(spec, name) and "emptyDirMounts" not in ex, name  # submit only
    assert all(_constant(spec, name, "launcher") == "trainjob" for name in TRAIN)
    assert _constant(spec, "validate", "gpus") == 0 and _constant(spec, "validate", "launcher") == "trainjob"
    assert _constant(spec, "export", "trtllm") is True  # a GPU cluster: the TRT-LLM repository too
    assert "TrainJob" in spec["pipelineInfo"]["description"]
    assert re.fullmatch(r"tuna-0\.1\.0\+test-trainjob-[0-9a-f]{8}\.yaml", compiled_trainjob.name)


def test_image_and_mounts_come_from_the_recipe(tmp_path: Path) -> None:
    image = "registry.example/tuna@sha256:" + "a" * 64
    cluster = load_recipe(SMOKE, [f"cluster.image={image}", "cluster.data_mount=/data",
                                  "cluster.checkpoints_mount=/ckpt"]).cluster
    spec, platform = load_ir(compile_pipeline(tmp_path, "0.1.0+test", cluster))
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {image}
    mounts = {m["mountPath"] for ex in platform["deploymentSpec"]["executors"].values() for m in ex.get("pvcMount", [])}
    assert mounts == {"/data", "/ckpt"}
    assert _constant(spec, "validate", "data_root") == "/data" and _constant(spec, "validate", "checkpoints_root") == "/ckpt"


def test_cluster_builds_get_distinct_names() -> None:
    default = PipelineOptions(version="v")
    assert default.suffix == "" and PipelineOptions(load_recipe(SMOKE, ["cluster.memory=16Gi", "cluster.shm_size=2Gi"]).cluster,
                                                    "v").suffix == ""
    # smoke's pods are smaller (8Gi, 1Gi /dev/shm): with the local launcher the training tasks' sizes reach the IR
    assert PipelineOptions(load_recipe(SMOKE).cluster, "v").suffix.startswith("-local-")
    a = PipelineOptions(load_recipe(SMOKE, LOCAL_GPU).cluster, "v")
    b = PipelineOptions(load_recipe(SMOKE, [*LOCAL_GPU, "cluster.node_selector={pool: h100}"]).cluster, "v")
    assert a.suffix.startswith("-local-gpu4-") and b.suffix.startswith("-local-gpu4-") and a.suffix != b.suffix
    # with a job launcher the GPU count is the job's business: it does not reach the IR
    c = PipelineOptions(load_recipe(LLAVA).cluster, "v")
    d = PipelineOptions(load_recipe(LLAVA, ["cluster.gpus_per_node=4"]).cluster, "v")
    assert c.suffix == d.suffix and c.suffix.startswith("-trainjob-")


@pytest.mark.parametrize(("cluster", "names"), [
    ({"checkpoints_mount": "/mnt/tuna"}, "cluster.checkpoints_mount: must differ from cluster.data_mount"),
    ({"data_mount": "/tmp"}, "cluster.data_mount: '/tmp' must be a folder of its own"),
])
def test_compile_time_options_fail_in_one_line(cluster: dict[str, Any], names: str) -> None:
    with pytest.raises(PipelineError) as info:
        PipelineOptions(ClusterConfig(**cluster))
    assert names in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ submit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_submit_to_an_unreachable_host_is_one_line_naming_the_url(tmp_path: Path) -> None:
    host = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(PipelineError) as info:
        submit(host, "tuna", "0.1.0+test", {"config": "configs/mini.yaml"}, out_dir=tmp_path)
    assert str(info.value).startswith(f"KFP host {host} is unreachable") and "\n" not in str(info.value)


class FakeClient:
    """Records what submit asks of kfp.Client (a KFP API server cannot run here)."""

    def __init__(self, existing_version: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.existing = existing_version

    def get_pipeline_id(self, name: str) -> str | None:
        self.calls.append(("get_pipeline_id", name))
        return "p-1" if self.existing else None

    def upload_pipeline(self, path: str, pipeline_name: str, description: str) -> Any:
        self.calls.append(("upload_pipeline", (Path(path).name, pipeline_name)))
        return type("P", (), {"pipeline_id": "p-1"})

    def list_pipeline_versions(self, pipeline_id: str, page_size: int, filter: str) -> Any:
        self.calls.append(("list_pipeline_versions", filter))
        versions = [type("V", (), {"pipeline_version_id": "v-old"})] if self.existing and self.existing in filter else []
        return type("L", (), {"pipeline_versions": versions})

    def upload_pipeline_version(self, path: str, pipeline_version_name: str, pipeline_id: str) -> Any:
        self.calls.append(("upload_pipeline_version", (Path(path).name, pipeline_version_name, pipeline_id)))
        return type("V", (), {"pipeline_version_id": "v-1"})

    def create_experiment(self, name: str, namespace: str | None = None) -> Any:
        self.calls.append(("create_experiment", (name, namespace)))
        return type("E", (), {"experiment_id": "e-1"})

    def run_pipeline(self, **kw: Any) -> Any:
        self.calls.append(("run_pipeline", kw))
        return type("R", (), {"run_id": "r-1"})


@pytest.fixture()
def kfp_host() -> Any:
    """Something that answers HTTP (submit probes the host before talking to it)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_submit_uploads_a_pipeline_version_and_creates_a_run(tmp_path: Path, kfp_host: str) -> None:
    client = FakeClient()
    params = {"config": "configs/llava7b.yaml", "overrides": ["train.stage2.max_steps=10"], "mlflow_secret": "tuna-mlflow"}
    out = submit(kfp_host, "tuna-exp", "0.1.0+abc1234", params, out_dir=tmp_path, client_factory=lambda h: client)
    names = [c[0] for c in client.calls]
    assert names == ["get_pipeline_id", "upload_pipeline", "list_pipeline_versions", "upload_pipeline_version",
                     "create_experiment", "run_pipeline"]
    assert dict(client.calls)["upload_pipeline_version"] == ("tuna-0.1.0+abc1234.yaml", "0.1.0+abc1234", "p-1")
    run = dict(client.calls)["run_pipeline"]
    assert run["pipeline_id"] == "p-1" and run["version_id"] == "v-1" and run["experiment_id"] == "e-1"
    assert run["params"] == params and run["service_account"] is None  # the default build: KFP's default account
    assert dict(client.calls)["create_experiment"] == ("tuna-exp", None)
    assert out["run_id"] == "r-1" and out["url"] == f"{kfp_host}/#/runs/details/r-1"
    assert (tmp_path / "tuna-0.1.0+abc1234.yaml").is_file()
    # The same version again: reused, not uploaded twice.
    again = FakeClient(existing_version="0.1.0+abc1234")
    submit(kfp_host, "tuna-exp", "0.1.0+abc1234", params, out_dir=tmp_path, client_factory=lambda h: again)
    assert "upload_pipeline_version" not in [c[0] for c in again.calls]
    assert dict(again.calls)["run_pipeline"]["version_id"] == "v-old"


def test_submit_runs_as_the_manifests_service_account_in_the_profile_namespace(tmp_path: Path, kfp_host: str) -> None:
    client = FakeClient()
    cluster = load_recipe(LLAVA).cluster
    submit(kfp_host, "tuna-exp", "0.1.0+abc1234", {"config": "configs/llava7b.yaml"}, cluster=cluster, out_dir=tmp_path,
           client_factory=lambda h: client)
    assert dict(client.calls)["create_experiment"] == ("tuna-exp", "tuna")
    assert dict(client.calls)["run_pipeline"]["service_account"] == "tuna-pipeline"
    rbac = (Path(__file__).resolve().parents[2] / "manifests" / "base" / "rbac.yaml").read_text()
    assert "name: tuna-pipeline" in rbac  # the account the manifests create and bind to the pipeline's Role


def test_submit_turns_a_server_refusal_into_one_line(tmp_path: Path, kfp_host: str) -> None:
    class Refusing(FakeClient):
        def create_experiment(self, name: str, namespace: str | None = None) -> Any:
            raise RuntimeError("(403)\nReason: Forbidden\nHTTP response body: no")

    with pytest.raises(PipelineError) as info:
        submit(kfp_host, "tuna", "0.1.0+x", {}, out_dir=tmp_path, client_factory=lambda h: Refusing())
    assert str(info.value) == f"KFP host {kfp_host}: RuntimeError: (403)"


# ------------------------------------------------------------------------------------------------ the CLI verb


def test_cli_compile_submit_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "compile", "--out", str(tmp_path), "--version", "9.9.9+cli"]) == 0
    assert capsys.readouterr().out.strip() == f"compiled {tmp_path / 'tuna-9.9.9+cli.yaml'}"
    assert main(["pipeline", "compile", "--out", str(tmp_path), "--version", "9.9.9+cli", "--config", str(LLAVA),
                 "cluster.launcher=local"]) == 0
    (gpu,) = tmp_path.glob("tuna-9.9.9+cli-local-gpu8-*.yaml")  # the recipe's 8 GPUs on its training tasks
    spec, platform = load_ir(gpu)
    assert _resources(spec, "train-tuna-stage1")["accelerator"]["resourceCount"] == "8"
    assert _executor(spec, platform, "train-tuna-stage1")["nodeSelector"]["labels"] == {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    cases = [
        (["pipeline"], "tuna pipeline: error: give an action: tuna pipeline compile | submit --host URL | run --local"),
        (["pipeline", "run", "--config", str(SMOKE)], "tuna pipeline: error: run executes through kfp.local only: add --local"),
        (["pipeline", "submit"], "tuna pipeline: error: submit needs --host URL"),
        (["pipeline", "run", "--local", "--config", str(SMOKE), "world.nope=1"], "tuna pipeline: error: unknown key 'world.nope'"),
        (["pipeline", "compile", "--out", str(tmp_path), "cluster.gpus_per_node=17"],
         "tuna pipeline: error: cluster.gpus_per_node: must be in 0..16"),
        (["pipeline", "compile", "--out", str(tmp_path), "cluster.launcher=slurm"], "tuna pipeline: error: cluster.launcher"),
        (["pipeline", "compile", "--gpu"], "usage:"),  # gone: the recipe's cluster section says where training runs
        (["pipeline", "run", "--local", "--config", str(SMOKE), "--param", "launcher=trainjob"],
         "tuna pipeline: error: --param 'launcher=trainjob': launcher is not a pipeline parameter; the recipe's "
         "cluster.launcher sets it"),
        (["pipeline", "run", "--local", "--config", str(SMOKE), "--param", "train_nodes=4"],
         "tuna pipeline: error: --param 'train_nodes=4': train_nodes is not a pipeline parameter; the recipe's "
         "cluster.num_nodes sets it"),
    ]
    port = _free_port()
    cases.append((["pipeline", "submit", "--host", f"http://127.0.0.1:{port}", "--out", str(tmp_path)],
                  f"tuna pipeline: error: KFP host http://127.0.0.1:{port} is unreachable"))
    for argv, start in cases:
        if start == "usage:":
            with pytest.raises(SystemExit):
                main(argv)
            assert "unrecognized arguments: --gpu" in capsys.readouterr().err
            continue
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, err


def test_golden_ir_is_committed_where_the_readme_says() -> None:
    assert GOLDEN.parent == REPO / "pipelines" / "compiled"
    assert "tuna-golden.yaml" in (REPO / "pipelines" / "README.md").read_text(encoding="utf-8")


def test_the_dag_covers_what_tuna_run_covers() -> None:
    from tuna.kfp.options import VARIANTS, WORLD_DATASTORES
    from tuna.retrieval.datastore import DATASTORES
    from tuna.variants import TRAINED

    assert WORLD_DATASTORES == DATASTORES == tuple(load_recipe(SMOKE).datastores) and VARIANTS == TRAINED


def test_quiet_local_runs_show_task_progress_with_times_and_log_everything() -> None:
    import io

    from tuna.kfp.local import _ProgressLog

    log, screen = io.StringIO(), io.StringIO()
    out = _ProgressLog(log, screen)
    out.write("03:01:16.934 - INFO - Executing task \x1b[96m'world'\x1b[0m\nsome executor chatter\n")
    out.write("03:01:17.000 - INFO - Task \x1b[96m'world'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    out.write("    asked 'What?' about 1.png over gRPC in 5 ms -> 'A'\n    deploy: error: no model")
    out.write("\n")
    shown = screen.getvalue().splitlines()
    assert shown[0] == "Executing task 'world'"
    assert shown[1].startswith("Task 'world' finished with status SUCCESS (") and shown[1].endswith(" s)")
    assert shown[2].startswith("asked 'What?'") and shown[3] == "deploy: error: no model"
    assert "some executor chatter" in log.getvalue() and "some executor chatter" not in screen.getvalue()


def test_quiet_local_runs_show_a_long_tasks_progress_at_most_every_interval() -> None:
    import io

    from tuna.kfp.local import _ProgressLog

    log, screen = io.StringIO(), io.StringIO()
    out = _ProgressLog(log, screen, every_s=3600)
    out.write("Executing task 'encoder'\nencoder epoch 1/20: loss 3.1\nencoder epoch 2/20: loss 2.9\n")
    out.write("Executing task 'train'\n  step 10/400  loss 2.5  9.0 samples/s\n  step 20/400  loss 2.4\n")
    assert screen.getvalue().splitlines() == ["Executing task 'encoder'", "  encoder epoch 1/20: loss 3.1",
                                              "Executing task 'train'", "  step 10/400  loss 2.5  9.0 samples/s"]
    every = _ProgressLog(io.StringIO(), screen := io.StringIO(), every_s=0)
    every.write("encoder epoch 1/20: a\nencoder epoch 2/20: b\n")
    assert screen.getvalue().splitlines() == ["  encoder epoch 1/20: a", "  encoder epoch 2/20: b"]
    assert log.getvalue().count("epoch") == 2


def test_each_declared_datastore_is_an_index_task(tmp_path: Path) -> None:
    """A recipe's datastores: section shapes the DAG: one cached index task per entry; the parent run and the
    evaluation wait for all of them; training reads model.datastore's."""
    cfg = load_recipe(SMOKE, ["data.corpora.shop.path=/data/shop", "datastores.shop.corpus=shop",
                              "eval.swap_datastore=shop"])
    path = compile_pipeline(tmp_path, "0.1.0+test", cfg.cluster, cfg)
    spec, _ = load_ir(path)
    tasks = tasks_by_display_name(spec)
    index = {n: tasks[n] for n in tasks if n.startswith("index-")}
    assert sorted(index) == ["index-A", "index-A-captions", "index-B", "index-shop"]
    assert all(t["cachingOptions"].get("enableCache") for _, t in index.values())
    keys = {n: key for n, (key, _) in index.items()}
    assert _constant(spec, "index-shop", "datastore") == "shop"
    assert set(keys.values()) <= set(tasks["start-run"][1]["dependentTasks"])
    # evaluation reads the swap and captions datastores directly (model.datastore's through the trained models)
    assert {keys[n] for n in ("index-B", "index-A-captions", "index-shop")} <= set(tasks["evaluate"][1]["dependentTasks"])
    train = tasks["train-tuna-stage1"][1]
    assert train["inputs"]["artifacts"]["datastore"]["taskOutputArtifact"]["producerTask"] == keys["index-A"]
    assert PipelineOptions.of(cfg, "v").suffix != "" and path.name != "tuna-0.1.0+test.yaml"   # a build of its own
    assert PipelineOptions.of(load_recipe(SMOKE, ["cluster.memory=16Gi", "cluster.shm_size=2Gi"]), "v").suffix == ""


def test_tunas_stage2_waits_for_the_baselines_whatever_the_recipe(tmp_path: Path, compiled: Path) -> None:
    """The recipe is a run parameter and train.stage2.init_from starts TUNA's stage 2 from the baseline's finished
    model, so TUNA's stage-2 task always waits for the baseline's; the stage-1 tasks do not wait for each other."""
    mini = load_recipe(CONFIGS / "mini.yaml")
    assert mini.train.stage2.init_from == "baseline"
    for ir in (compiled, compile_pipeline(tmp_path, "0.1.0+test", mini.cluster, mini)):
        tasks = tasks_by_display_name(load_ir(ir)[0])
        assert tasks["train-baseline-stage2"][0] in tasks["train-tuna-stage2"][1]["dependentTasks"]
        assert tasks["train-tuna-stage1"][0] not in tasks["train-baseline-stage1"][1].get("dependentTasks", [])
        assert tasks["train-baseline-stage1"][0] not in tasks["train-tuna-stage1"][1].get("dependentTasks", [])
