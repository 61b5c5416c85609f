"""Cluster launch: TrainJob / PyTorchJob rendering, offline CRD validation, submit errors and status following.

No cluster runs here: rendered objects are checked against the CRD schemas kept in the repo, the pod commands are
parsed by the real parsers (torchrun's and the worker's), the mpirun wrapper runs under bash with a stand-in
mpirun that prints its argv, and ``follow`` polls a fake CustomObjectsApi (the one place a stand-in is used).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import CONFIGS, SMOKE
from tuna.errors import ConfigError, TunaError
from tuna.recipe import load_recipe
from tuna.train import cluster, jobs
from tuna.train.cluster import ClusterError, Connection, FollowTimeout
from tuna.train.jobs import ManifestInvalid
from tuna.train.worker import build_parser as worker_parser

LLAVA = CONFIGS / "llava7b.yaml"
RENDER = {"TrainJob": jobs.render_trainjob, "PyTorchJob": jobs.render_pytorchjob}


def render(kind: str, recipe: Path = LLAVA, stage: int = 2, overrides: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    cfg = load_recipe(recipe, list(overrides))
    return RENDER[kind](cfg, stage, "tuna", list(overrides), recipe=recipe, name=f"tuna-{recipe.stem}-s{stage}", **kw)


def refusal(obj: dict[str, Any]) -> str:
    with pytest.raises(ManifestInvalid) as info:
        jobs.validate(obj)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("recipe", [SMOKE, CONFIGS / "mini.yaml", LLAVA], ids=lambda p: p.stem)
@pytest.mark.parametrize("kind", sorted(RENDER))
@pytest.mark.parametrize("stage", [1, 2])
def test_rendered_jobs_satisfy_their_crds(kind: str, recipe: Path, stage: int) -> None:
    obj = render(kind, recipe, stage)
    jobs.validate(obj)
    assert obj["kind"] == kind and obj["metadata"]["namespace"] == "tuna"
    assert yaml.safe_load(jobs.to_yaml(obj)) == obj  # the --dry-run text is the object (and has no YAML aliases)
    assert "&id" not in jobs.to_yaml(obj)


def test_runtime_manifest_satisfies_the_clustertrainingruntime_crd() -> None:
    kept = yaml.safe_load(jobs.RUNTIME_FILE.read_text(encoding="utf-8"))
    jobs.validate(kept)
    cfg = load_recipe(LLAVA, ["cluster.image=registry.example/tuna@sha256:" + "a" * 64, "cluster.runtime=tuna-ds"])
    runtime = jobs.render_runtime(cfg)
    jobs.validate(runtime)
    assert runtime["metadata"]["name"] == "tuna-ds"
    pods = [j["template"]["spec"]["template"]["spec"] for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]]
    assert {c["image"] for p in pods for c in p["containers"]} == {cfg.cluster.image}  # launcher AND node pods
    assert runtime["spec"]["mlPolicy"]["mpi"]["runLauncherAsNode"] is True


def test_kept_crds_name_their_upstream_and_licence() -> None:
    for path in sorted(jobs.CRD_DIR.glob("*.yaml")) + [jobs.RUNTIME_FILE]:
        head = path.read_text(encoding="utf-8")[:1200]
        upstream = "github.com/kubeflow/" in head or "github.com/kubernetes-sigs/kueue" in head
        assert upstream and "commit " in head and "Apache-2.0" in head, path.name


def test_trainjob_runs_the_worker_under_mpirun_with_the_cluster_settings() -> None:
    job = render("TrainJob", overrides=("train.stage2.lr=0.00001",), resume=True)
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"] == {"name": "tuna-deepspeed-distributed", "apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    assert trainer["image"] == "ghcr.io/tuna-platform/tuna:0.1.0-cu130"   # the GPU recipe's CUDA image (make image-cuda)
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    cmd = trainer["command"]
    assert cmd[:2] == ["bash", "-c"] and cmd[3] == "mpirun"
    mpirun = cmd[4:cmd.index("python")]
    assert mpirun[:4] == ["--hostfile", "/etc/mpi/hostfile", "-np", "32"]
    args = worker_parser().parse_args(cmd[cmd.index("python") + 3:])
    assert cmd[cmd.index("python") + 1:cmd.index("python") + 3] == ["-m", "tuna.train.worker"]
    assert (args.config, args.stage, args.variant, args.resume) == ("/opt/tuna/configs/llava7b.yaml", "2", "tuna", True)
    assert args.overrides == ["train.stage2.lr=0.00001",  # the caller's, then the cluster's (resolved, so last)
                              "train.ranks=8", "train.precision=bf16", "train.stage2.zero_stage=3"]
    assert not any(o.startswith("run.data_dir=") for o in args.overrides)  # /mnt/tuna/llava7b is on the PVC already


def test_pytorchjob_runs_the_worker_under_torchrun() -> None:
    from torch.distributed.run import get_args_parser

    job = render("PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    assert job["spec"]["nprocPerNode"] == "8"
    (container,) = specs["Worker"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["command"][0] == "torchrun"
    run = get_args_parser().parse_args(container["command"][1:])  # torchrun's own parser
    assert (run.nnodes, run.nproc_per_node, run.module, run.training_script) == ("4", "8", True, "tuna.train.worker")
    args = worker_parser().parse_args(run.training_script_args)
    assert (args.config, args.stage) == ("/opt/tuna/configs/llava7b.yaml", "2")
    assert "train.stage2.zero_stage=3" in args.overrides and "train.precision=bf16" in args.overrides


def test_single_node_pytorchjob_has_no_workers() -> None:
    job = render("PyTorchJob", SMOKE, 1)
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    jobs.validate(job)


def test_gpu_resources_scheduling_and_secrets_reach_every_pod() -> None:
    tj, pj = render("TrainJob"), render("PyTorchJob")
    gpus = {"cpu": "88", "memory": "900Gi", "nvidia.com/gpu": "8"}
    assert tj["spec"]["trainer"]["resourcesPerNode"] == {"requests": gpus, "limits": gpus}
    patches = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert [p["name"] for p in patches] == ["launcher", "node"]
    pods = [p["template"]["spec"]["template"]["spec"] for p in patches]
    pods += [r["template"]["spec"] for r in pj["spec"]["pytorchReplicaSpecs"].values()]
    for pod in pods:
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert pod["serviceAccountName"] == "tuna-trainer"
        assert {"name": "data", "persistentVolumeClaim": {"claimName": "tuna-data"}} in pod["volumes"]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "data", "mountPath": "/mnt/tuna"} in mounts and {"name": "dshm", "mountPath": "/dev/shm"} in mounts
    # PyTorchJob: every key of the Secrets via envFrom.
    for spec in pj["spec"]["pytorchReplicaSpecs"].values():
        (c,) = spec["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert c["envFrom"] == [{"secretRef": {"name": n}} for n in ("tuna-mlflow", "tuna-s3", "tuna-milvus")]
        assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.tuna.svc:5000"} in c["env"]
    # TrainJob (no envFrom in its API): the Secrets' keys one by one; the required ones are not optional.
    env = {e["name"]: e for e in tj["spec"]["trainer"]["env"]}
    assert env["MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-milvus", "key": "MILVUS_TOKEN"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "tuna-mlflow"
    progress_env = {"KUBEFLOW_TRAINER_SERVER_URL", "KUBEFLOW_TRAINER_SERVER_CA_CERT", "KUBEFLOW_TRAINER_SERVER_TOKEN"}
    assert set(env["TUNA_FORWARD_ENV"]["value"].split()) == {"PATH"} | (set(env) - {"TUNA_FORWARD_ENV"}) | progress_env


def test_a_relative_data_dir_override_still_lands_on_the_pvc() -> None:
    job = render("PyTorchJob", SMOKE, 1, overrides=("run.data_dir=data/other",))
    args = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    data_dirs = [a for a in args if a.startswith("run.data_dir=")]
    assert data_dirs[-1] == "run.data_dir=/mnt/tuna/data/other"  # the last one is what the worker loads


def test_cpu_recipe_renders_cpu_pods_with_data_on_the_pvc() -> None:
    job = render("TrainJob", SMOKE, 1)
    trainer = job["spec"]["trainer"]
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "4", "memory": "8Gi"}  # no GPU key
    assert trainer["numProcPerNode"] == 2  # train.ranks on CPU pods
    assert "run.data_dir=/mnt/tuna/data/smoke" in trainer["command"]
    assert "train.precision=fp32" in trainer["command"]


def test_mpirun_wrapper_forwards_only_the_variables_that_are_set(tmp_path: Path) -> None:
    """Run the TrainJob's command under bash with a stand-in mpirun that prints the argv it receives."""
    job = render("TrainJob")
    stub = tmp_path / "mpirun"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    stub.chmod(0o755)
    env = {e["name"]: e.get("value", "secret") for e in job["spec"]["trainer"]["env"] if e["name"] != "AWS_ENDPOINT_URL"}
    env["PATH"] = f"{tmp_path}:{os.environ['PATH']}"
    out = subprocess.run(job["spec"]["trainer"]["command"], env=env, capture_output=True, text=True, check=True).stdout
    argv = out.splitlines()
    forwarded = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
    assert "PATH" in forwarded and "MLFLOW_TRACKING_URI" in forwarded and "MILVUS_TOKEN" in forwarded
    assert "AWS_ENDPOINT_URL" not in forwarded  # optional Secret key absent: not named, so mpirun cannot trip on it
    rest = argv[2 * len(forwarded):]
    assert rest[:4] == ["--hostfile", "/etc/mpi/hostfile", "-np", "32"]
    assert rest[rest.index("python"):][:3] == ["python", "-m", "tuna.train.worker"]


def test_job_names_are_short_rfc1035_labels() -> None:
    cfg = load_recipe(SMOKE, ["run.name=A_Very_Long_Run_Name_With_Caps_And_More"])
    name = jobs.job_name(cfg, 2, "tuner_off")
    assert jobs._DNS1035.match(name) and len(name) <= 50, name  # JobSet pod hostnames add ~13 characters


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "override, key",
    [
        ("cluster.gpus_per_node=17", "cluster.gpus_per_node"),
        ("cluster.num_nodes=0", "cluster.num_nodes"),
        ("cluster.image=ghcr.io/tuna-platform/tuna", "cluster.image"),
        ("cluster.precision=fp8", "cluster.precision"),
        ("cluster.precision=fp16", "cluster.precision"),  # smoke has CPU pods
        ("cluster.zero_stage=4", "cluster.zero_stage"),
        ("cluster.memory=lots", "cluster.memory"),
        ("cluster.namespace=Tuna_NS", "cluster.namespace"),
        ("cluster.tolerations=[{key: a, operator: Exists, value: b, effect: null}]", "cluster.tolerations[0].value"),
        ("cluster.node_selector=[gpu]", "cluster.node_selector"),
    ],
)
def test_bad_cluster_settings_fail_at_load_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(SMOKE, [override])
    message = str(info.value)
    assert message.startswith(f"{key}:") and "\n" not in message, message


@pytest.mark.parametrize(
    "stage, variant, overrides, key",
    [
        (3, "tuna", [], "stage"),
        (2, "llava", [], "variant"),
        (1, "tuna", ["cluster.precision=null", "train.precision=fp16"], "train.precision"),  # CPU pods
        (1, "tuna", ["run.data_dir=/scratch/smoke"], "run.data_dir"),
    ],
)
def test_bad_launch_fails_before_rendering(stage: int, variant: str, overrides: list[str], key: str) -> None:
    cfg = load_recipe(SMOKE, overrides)
    for render_fn in RENDER.values():
        with pytest.raises(ConfigError) as info:
            render_fn(cfg, stage, variant, overrides)
        assert str(info.value).startswith(f"{key}:") and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kind, edit, path, words",
    [
        ("TrainJob", lambda o: o["spec"]["trainer"].update(numNodes="4"), "spec.trainer.numNodes", "integer"),
        ("TrainJob", lambda o: o["spec"].pop("runtimeRef"), "spec", "'runtimeRef' is a required property"),
        ("TrainJob", lambda o: o["spec"]["trainer"].update(numNode=4), "spec.trainer", "'numNode' was unexpected"),
        ("TrainJob", lambda o: o["spec"]["trainer"]["resourcesPerNode"]["limits"].update(cpu="4 cores"),
         "spec.trainer.resourcesPerNode.limits.cpu", "not a Kubernetes quantity"),
        ("TrainJob", lambda o: o["metadata"].update(name="Tuna_Job"), "metadata.name", "RFC 1035"),  # a CEL rule
        ("PyTorchJob", lambda o: o["metadata"].update(name="tuna.job"), "metadata.name", "RFC 1035"),  # its webhook
        ("TrainJob", lambda o: o["spec"]["trainer"]["env"].append({"name": "OMPI_MCA_orte_default_hostfile", "value": "x"}),
         "spec.trainer.env[", "reserved"),
        ("PyTorchJob", lambda o: o["spec"].update(nprocPerNode=8), "spec.nprocPerNode", "string"),
        ("PyTorchJob", lambda o: o["spec"].pop("pytorchReplicaSpecs"), "spec", "'pytorchReplicaSpecs' is a required"),
        ("PyTorchJob", lambda o: o["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),
         "spec.pytorchReplicaSpecs.Master.replicas", "must be 1"),
        ("PyTorchJob", lambda o: o["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
         .update(name="main"), "spec.pytorchReplicaSpecs.Worker.template.spec.containers", "named pytorch"),
        ("PyTorchJob", lambda o: o.update(apiVersion="kubeflow.org/v2"), "apiVersion", "kubeflow.org/v1"),
    ],
)
def test_broken_objects_are_refused_naming_the_field(kind: str, edit: Any, path: str, words: str) -> None:
    obj = copy.deepcopy(render(kind))
    edit(obj)
    message = refusal(obj)
    assert f": {path}" in message and words in message, message


def test_unknown_kind_is_refused() -> None:
    assert "TrainJob" in refusal({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}})


# ---------------------------------------------------------------------------------------------- submit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_submit_to_an_unreachable_api_server_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    port = _free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}}],
        "users": [{"name": "me", "user": {"token": "not-a-secret"}}],
    }))
    with pytest.raises(ClusterError) as info:
        cluster.submit(render("TrainJob", SMOKE, 1), "tuna", kubeconfig=str(kubeconfig))
    err = info.value
    message = str(err)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "lab" in message, message
    assert "Connection refused" in message and "kubectl cluster-info" in message
    assert err.__cause__ is None and err.__suppress_context__  # printed alone: no chained client traceback


def test_submit_without_a_kubeconfig_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ClusterError) as info:
        cluster.submit(render("PyTorchJob", SMOKE, 1), "tuna")
    message = str(info.value)
    assert "\n" not in message and "no kubeconfig" in message and "KUBECONFIG" in message, message
    assert isinstance(info.value, TunaError) and info.value.exit_code == 2


def test_submit_validates_before_it_connects() -> None:
    job = render("TrainJob", SMOKE, 1)
    job["spec"]["trainer"]["numNodes"] = "1"
    with pytest.raises(ManifestInvalid):
        cluster.submit(job, "tuna", conn=Connection(api=None, host="https://never.used", context="none"))


class FakeCustomObjects:
    """Stands in for kubernetes' CustomObjectsApi: records creates, replays a scripted status sequence on get."""

    def __init__(self, states: list[Any]) -> None:
        self.states, self.created, self.gets = states, [], 0

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict,
                                        **_: Any) -> dict:
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                     **_: Any) -> dict:
        state = self.states[min(self.gets, len(self.states) - 1)]
        self.gets += 1
        if isinstance(state, Exception):
            raise state
        return {"metadata": {"name": name}, "status": state}


def _follow(kind: str, states: list[Any], timeout: float = 1e9) -> tuple[str, list[str], FakeCustomObjects]:
    api, lines, now = FakeCustomObjects(states), [], [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    result = cluster.follow("job-1", "tuna", kind, poll_seconds=5, timeout=timeout, echo=lines.append, sleep=sleep,
                            clock=lambda: now[0], conn=Connection(api, "https://k8s.example:6443", "lab"))
    return result, lines, api


def cond(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def test_submit_creates_the_object_in_the_namespace() -> None:
    api = FakeCustomObjects([{}])
    job = render("TrainJob", SMOKE, 1)
    name = cluster.submit(job, "team-a", conn=Connection(api, "https://k8s.example:6443", "lab"))
    assert name == job["metadata"]["name"]
    ((group, version, namespace, plural, body),) = api.created
    assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "team-a", "trainjobs")
    assert body["metadata"]["namespace"] == "team-a"


def test_follow_trainjob_to_success() -> None:
    states = [{}, {}, {"jobsStatus": [{"name": "launcher", "active": 1}, {"name": "node", "active": 3}]},
              {"jobsStatus": [{"name": "launcher", "active": 1}, {"name": "node", "active": 3}]},
              {"conditions": [cond("Complete", "JobsCompleted", "jobs completed")]}]
    result, lines, _ = _follow("TrainJob", states)
    assert result == "Succeeded"
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == ["Pending", "Running", "Succeeded"]  # changes only
    assert lines[-1] == "TrainJob tuna/job-1: Succeeded (JobsCompleted: jobs completed)"


def test_follow_pytorchjob_to_failure() -> None:
    states = [{"conditions": [cond("Created")]}, {"conditions": [cond("Created"), cond("Running")]},
              {"conditions": [cond("Created"), {"type": "Running", "status": "False"},
                              cond("Failed", "PyTorchJobFailed", "master-0 exited with code 1")]}]
    result, lines, _ = _follow("PyTorchJob", states)
    assert result == "Failed"
    assert lines == ["PyTorchJob tuna/job-1: Created", "PyTorchJob tuna/job-1: Running",
                     "PyTorchJob tuna/job-1: Failed (PyTorchJobFailed: master-0 exited with code 1)"]


def test_follow_times_out_in_one_line_and_the_job_keeps_running() -> None:
    with pytest.raises(FollowTimeout) as info:
        _follow("PyTorchJob", [{"conditions": [cond("Running")]}], timeout=60)
    message = str(info.value)
    assert "\n" not in message and "still Running after 60 s" in message and "kubectl get" in message


def test_follow_gives_up_when_the_job_is_gone() -> None:
    from kubernetes.client.exceptions import ApiException

    gone = ApiException(status=404, reason="Not Found")
    gone.body = '{"message": "trainjobs.trainer.kubeflow.org \\"job-1\\" not found"}'
    with pytest.raises(ClusterError) as info:
        _follow("TrainJob", [gone])
    assert "\n" not in str(info.value) and "not found" in str(info.value)


def test_launch_dry_run_prints_the_validated_yaml() -> None:
    lines: list[str] = []
    cfg = load_recipe(LLAVA)
    assert cluster.launch(cfg, 2, launcher="pytorchjob", dry_run=True, echo=lines.append) == "DryRun"
    (text,) = lines
    obj = yaml.safe_load(text)
    jobs.validate(obj)
    assert obj["kind"] == "PyTorchJob" and "tuna.train.worker" in text


@pytest.mark.parametrize("launcher", ["trainjob", "pytorchjob"])
def test_launch_forwards_the_pipelines_mlflow_parent_run(launcher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The KFP task exports TUNA_MLFLOW_PARENT_RUN_ID; the ranks run in other pods, so the job must carry it."""
    lines: list[str] = []
    monkeypatch.setenv("TUNA_MLFLOW_PARENT_RUN_ID", "f00d")
    cluster.launch(load_recipe(SMOKE), 1, launcher=launcher, dry_run=True, echo=lines.append)
    obj = yaml.safe_load(lines[0])
    pod = obj["spec"]["trainer"] if launcher == "trainjob" else \
        obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert {"name": "TUNA_MLFLOW_PARENT_RUN_ID", "value": "f00d"} in pod["env"]
    monkeypatch.delenv("TUNA_MLFLOW_PARENT_RUN_ID")
    lines.clear()
    cluster.launch(load_recipe(SMOKE), 1, launcher=launcher, dry_run=True, echo=lines.append)
    assert "TUNA_MLFLOW_PARENT_RUN_ID" not in lines[0]


def test_launch_submits_then_follows_to_the_end() -> None:
    api, lines = FakeCustomObjects([{"conditions": [cond("Complete")]}]), []
    cfg = load_recipe(SMOKE)
    result = cluster.launch(cfg, 1, "baseline", launcher="trainjob", conn=Connection(api, "https://k8s.example:6443", "lab"),
                            echo=lines.append)
    assert result == "Succeeded" and len(api.created) == 1
    assert lines[0].startswith("submitted TrainJob tuna/tuna-smoke-s1-baseline-") and lines[-1].endswith("Succeeded")
    with pytest.raises(ConfigError, match="^launcher: "):
        cluster.launch(cfg, 1, launcher="mpijob")


# ----------------------------------------------------------------- Kueue, ServiceAccount, deprecation, progress


@pytest.mark.parametrize("kind", sorted(RENDER))
def test_kueue_queue_labels_the_job_and_creates_it_suspended(kind: str) -> None:
    """Kueue's TrainJob guide: the queue label in the job's metadata, suspend true (Kueue unsuspends on admission)."""
    obj = render(kind, LLAVA, 2, ("cluster.kueue_queue=tuna",))
    jobs.validate(obj)
    assert obj["metadata"]["labels"][jobs.KUEUE_QUEUE_LABEL] == "tuna"
    suspend = obj["spec"]["suspend"] if kind == "TrainJob" else obj["spec"]["runPolicy"]["suspend"]
    assert suspend is True
    assert jobs.KUEUE_QUEUE_LABEL not in yaml.safe_dump(obj["spec"])  # on the job only, not on its pods
    plain = render(kind, LLAVA, 2)
    assert jobs.KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]
    assert "suspend" not in plain["spec"] and "suspend" not in plain["spec"].get("runPolicy", {})


@pytest.mark.parametrize("override, key, fix", [
    ("cluster.kueue_queue=gpu-team", "cluster.kueue_queue", "manifests/components/kueue"),
    ("cluster.service_account=ml-runner", "cluster.service_account", "manifests/base/rbac.yaml"),
])
@pytest.mark.parametrize("kind", sorted(RENDER))
def test_a_queue_or_service_account_the_manifests_do_not_create_is_refused_before_rendering(
        kind: str, override: str, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        render(kind, LLAVA, 2, (override,))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{key}: ") and fix in message, message
    api = FakeCustomObjects([{}])
    with pytest.raises(ConfigError):  # launch renders first: nothing reaches the API server
        cluster.launch(load_recipe(LLAVA, [override]), 2, launcher=kind.lower(),
                       conn=Connection(api, "https://k8s.example:6443", "lab"), echo=lambda _: None)
    assert api.created == []


@pytest.mark.parametrize("launcher", ["trainjob", "pytorchjob"])
def test_the_pipelines_validate_task_refuses_them_before_any_training(launcher: str) -> None:
    from tuna.kfp.validate import validate_inputs

    cluster_params = {"target": "kubernetes", "launcher": launcher, "data_root": "/mnt/tuna", "data_pvc": "tuna-data",
                      "checkpoints_root": "/mnt/tuna-checkpoints", "checkpoints_pvc": "tuna-checkpoints",
                      "mlflow_secret": "tuna-mlflow", "milvus_secret": "tuna-milvus", "s3_secret": "tuna-s3",
                      "deploy_target": "none"}
    with pytest.raises(ConfigError, match="^cluster.kueue_queue: 'gpu-team' is not a LocalQueue manifests/ creates"):
        validate_inputs(str(LLAVA), ["cluster.kueue_queue=gpu-team"], **cluster_params)
    with pytest.raises(ConfigError, match="^cluster.service_account: 'ml-runner' is not a ServiceAccount"):
        validate_inputs(str(LLAVA), ["cluster.service_account=ml-runner"], **cluster_params)


@pytest.mark.parametrize("override", ["cluster.kueue_queue=Team_A", "cluster.kueue_queue=" + "q" * 64])
def test_a_kueue_queue_that_is_no_dns_label_fails_at_load(override: str) -> None:
    with pytest.raises(ConfigError, match="cluster.kueue_queue"):
        load_recipe(SMOKE, [override])


def test_pytorchjob_launcher_warns_once_that_it_is_deprecated(capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    cluster.launch(load_recipe(LLAVA), 2, launcher="pytorchjob", dry_run=True, echo=lines.append)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "deprecated" in err and "Training Operator v1" in err and "trainjob" in err
    assert yaml.safe_load(lines[0])["kind"] == "PyTorchJob"  # the dry-run YAML is untouched by the warning
    cluster.launch(load_recipe(LLAVA), 2, launcher="trainjob", dry_run=True, echo=lines.append)
    assert capsys.readouterr().err == ""


def test_follow_prints_the_trainjob_progress_the_trainer_reports() -> None:
    running = {"jobsStatus": [{"name": "launcher", "active": 1}, {"name": "node", "active": 3}]}
    report = {"progressPercentage": 45, "estimatedRemainingSeconds": 3725, "lastUpdatedTime": "2026-12-04T10:00:00Z",
              "metrics": [{"name": "loss", "value": "0.2347"}, {"name": "lr", "value": "2e-05"}]}
    states = [running, {**running, "trainerStatus": report}, {**running, "trainerStatus": report},
              {**running, "trainerStatus": {**report, "progressPercentage": 100, "estimatedRemainingSeconds": 0}},
              {"conditions": [cond("Complete", "JobsCompleted", "jobs completed")], "trainerStatus": report}]
    result, lines, _ = _follow("TrainJob", states)
    assert result == "Succeeded"
    assert lines == ["TrainJob tuna/job-1: Running (launcher: 1 active, node: 3 active)",
                     "TrainJob tuna/job-1: 45%, about 1h 02m left, loss 0.2347, lr 2e-05",
                     "TrainJob tuna/job-1: 100%, about 0s left, loss 0.2347, lr 2e-05",
                     "TrainJob tuna/job-1: Succeeded (JobsCompleted: jobs completed)"]


def test_follow_says_a_suspended_queued_job_waits_for_kueue() -> None:
    api, lines, now = FakeCustomObjects([{"conditions": [cond("Suspended")]}, {"conditions": [cond("Complete")]}]), [], [0.0]
    real_get = api.get_namespaced_custom_object

    def get(*args: Any, **kw: Any) -> dict:
        obj = real_get(*args, **kw)
        obj["metadata"]["labels"] = {jobs.KUEUE_QUEUE_LABEL: "tuna"}
        return obj

    api.get_namespaced_custom_object = get  # type: ignore[method-assign]
    cluster.follow("job-1", "tuna", "TrainJob", poll_seconds=5, echo=lines.append, sleep=lambda s: None,
                   clock=lambda: now[0], conn=Connection(api, "https://k8s.example:6443", "lab"))
    assert lines[0] == "TrainJob tuna/job-1: Suspended (waiting for Kueue to admit it from LocalQueue tuna)"
