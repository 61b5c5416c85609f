"""`helm upgrade --install tuna-serving` from the deploy task: the pure command, and the chart rendered with it offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support import REPO, SMOKE
from tuna.recipe import load_recipe
from tuna.serve.deploy import (
    DeployError,
    helm_upgrade_command,
    helm_values,
    pvc_uri,
    set_args,
)

CHART = REPO / "helm" / "tuna-serving"
CLUSTER = ["index.uri=http://milvus.milvus.svc:19530", "cluster.milvus_secret=tuna-milvus", "cluster.s3_secret=tuna-s3",
           "cluster.mlflow_secret=tuna-mlflow", "track.tracking_uri=http://mlflow.tuna.svc:5000", "serve.datastore=B"]


def test_upgrade_command_for_a_repository_on_a_pvc() -> None:
    cfg = load_recipe(SMOKE, CLUSTER)
    cmd = helm_upgrade_command(cfg, "tuna-serving", "tuna", "pvc://tuna-checkpoints/smoke/serve/tuna/model_repository",
                               ["ci/cpu-values.yaml"], chart="helm/tuna-serving")
    assert cmd == [
        "helm", "upgrade", "--install", "tuna-serving", "helm/tuna-serving", "--namespace", "tuna", "--wait=watcher",
        "--timeout", "15m0s", "--rollback-on-failure", "--history-max", "10", "-f", "ci/cpu-values.yaml",
        "--set-string", "image.repository=ghcr.io/tuna-platform/tuna-serving", "--set-string", "image.tag=0.1.0",
        "--set-string", "model.engine=hf", "--set-string", "milvus.uri=http://milvus.milvus.svc:19530", "--set-string", "milvus.tokenSecret.name=tuna-milvus",
        "--set-string", "milvus.tokenSecret.key=MILVUS_TOKEN", "--set-string", "datastore.default=B",
        "--set", "serviceAccount.create=false", "--set-string", "serviceAccount.name=tuna-serving",
        "--set-string", "modelRepository.source=pvc", "--set-string", "modelRepository.pvc.claimName=tuna-checkpoints",
        "--set-string", "modelRepository.pvc.subPath=smoke/serve/tuna/model_repository"]


def test_values_for_mlflow_and_s3_sources_and_image_digests() -> None:
    cfg = load_recipe(SMOKE, CLUSTER)
    mlflow = dict(helm_values(cfg, "models:/tuna-smoke-serving@evaluated"))
    assert mlflow["modelRepository.source"] == "mlflow" and mlflow["modelRepository.mlflow.alias"] == "evaluated"
    assert mlflow["modelRepository.mlflow.registeredModel"] == "tuna-smoke-serving"
    assert mlflow["modelRepository.mlflow.trackingUri"] == "http://mlflow.tuna.svc:5000"
    assert mlflow["modelRepository.mlflow.credentialsSecret"] == "tuna-mlflow"
    s3 = dict(helm_values(cfg, "s3://models/tuna/model_repository/"))
    assert (s3["modelRepository.s3.bucket"], s3["modelRepository.s3.prefix"]) == ("models", "tuna/model_repository")
    assert s3["modelRepository.s3.credentialsSecret.name"] == "tuna-s3"
    pinned = load_recipe(SMOKE, [*CLUSTER, "cluster.serving_image=ghcr.io/tuna-platform/tuna-serving@sha256:" + "a" * 64])
    values = dict(helm_values(pinned, "pvc://c/x"))
    assert values["image.digest"] == "sha256:" + "a" * 64 and "image.tag" not in values
    vllm = dict(helm_values(load_recipe(SMOKE, [*CLUSTER, "serve.engine=vllm",
                                                "cluster.serving_image=ghcr.io/tuna-platform/tuna-serving:0.1.0-vllm"]), "pvc://c/x"))
    assert (vllm["model.engine"], vllm["image.tag"]) == ("vllm", "0.1.0-vllm")   # the engine and the image holding it
    gpu = dict(helm_values(load_recipe(SMOKE, [*CLUSTER, "serve.engine=vllm", "cluster.gpus_per_node=1"]), "pvc://c/x"))
    assert "model.engine" not in gpu   # a GPU recipe serves the TensorRT-LLM repository: no vLLM environment to check
    assert set_args([("a", "x,y"), ("n", 3), ("b", True)]) == ["--set-string", "a=x\\,y", "--set", "n=3", "--set", "b=true"]


@pytest.mark.parametrize(("overrides", "uri", "names"), [
    (CLUSTER, "ftp://x/y", "unknown scheme; use pvc://<claim>/<path>"),
    (CLUSTER, "pvc://Bad_Claim/x", "'Bad_Claim' is not a PersistentVolumeClaim name"),
    (CLUSTER, "models:/tuna-serving", "write models:/<registered model>@<alias>"),
    (CLUSTER[:1], "models:/tuna@x", "names no MLflow server"),
    ([], "pvc://c/x", "index.uri is null"),
])
def test_bad_deploy_inputs_fail_in_one_line(overrides: list[str], uri: str, names: str) -> None:
    with pytest.raises(DeployError) as info:
        helm_upgrade_command(load_recipe(SMOKE, overrides), "tuna-serving", "tuna", uri)
    assert names in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DeployError, match="Helm release name"):
        helm_upgrade_command(load_recipe(SMOKE, CLUSTER), "Tuna_Serving", "tuna", "pvc://c/x")


def test_pvc_uri() -> None:
    assert pvc_uri("/mnt/ckpt/smoke/serve/tuna/model_repository", "tuna-checkpoints", "/mnt/ckpt/") == \
        "pvc://tuna-checkpoints/smoke/serve/tuna/model_repository"
    with pytest.raises(DeployError, match="is not under '/mnt/ckpt'"):
        pvc_uri("/mnt/ckpt2/x", "c", "/mnt/ckpt")


@pytest.mark.parametrize("uri", ["pvc://tuna-checkpoints/smoke/serve/tuna/model_repository",
                                 "models:/tuna-smoke-serving@evaluated", "s3://models/tuna/model_repository"])
def test_the_chart_renders_with_the_deploy_values(tmp_path: Path, uri: str) -> None:
    """The same --set flags through `helm template` (real helm v4, offline): the values pass the chart's schema."""
    from tuna.kube.binaries import helm_binary, run_tool

    cfg = load_recipe(SMOKE, CLUSTER)
    cmd = helm_upgrade_command(cfg, "tuna-serving", "tuna", uri, [CHART / "ci" / "cpu-values.yaml"], chart=CHART)
    flags = cmd[cmd.index("-f"):]  # values file + --set flags, exactly as the deploy passes them
    rendered = run_tool(helm_binary(), ["template", "tuna-serving", str(CHART), "--namespace", "tuna", *flags],
                        what="render tuna-serving with the deploy values")
    objects = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    assert triton["image"] == "ghcr.io/tuna-platform/tuna-serving:0.1.0"   # the recipe's, over the cpu scenario's
    env = {e["name"]: e for e in triton["env"]}
    assert env["MILVUS_URI"]["value"] == "http://milvus.milvus.svc:19530" and env["TUNA_DATASTORE_DEFAULT"]["value"] == "B"
    ref = env["MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("tuna-milvus", "MILVUS_TOKEN")
    init = {e["name"]: e.get("value", e.get("valueFrom")) for c in pod.get("initContainers", []) for e in c.get("env", [])}
    assert init["ENGINE"] == "hf"   # the recipe's serve.engine wins over the cpu scenario's vllm
    text = yaml.safe_dump(pod)
    if uri.startswith("pvc://"):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["tuna-checkpoints"] and "smoke/serve/tuna/model_repository" in text
    elif uri.startswith("models:/"):
        assert "tuna-smoke-serving" in text and "evaluated" in text and "http://mlflow.tuna.svc:5000" in text
        assert "tuna-mlflow" in text  # the credentials Secret, loaded with envFrom
    else:
        assert (init["S3_BUCKET"], init["S3_PREFIX"]) == ("models", "tuna/model_repository")
        assert init["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "tuna-s3"


def test_a_gpu_recipe_deploys_and_registers_the_tensorrt_llm_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy task of a GPU pipeline hands helm the TensorRT-LLM repository (one GPU per pod), not the CPU one;
    an export without it is refused in one line; a CPU recipe keeps serving the CPU repository."""
    from tuna.kfp import tasks
    from tuna.kfp.options import PipelineError

    export = {"variant": "tuna", "path": "/mnt/ckpt/smoke/serve/tuna/model_repository",
              "trtllm_path": "/mnt/ckpt/smoke/serve/tuna/trtllm/model_repository"}
    gpu = load_recipe(SMOKE, [*CLUSTER, "cluster.gpus_per_node=1"])
    assert tasks.served_repository(gpu, export) == export["trtllm_path"]
    assert tasks.served_repository(load_recipe(SMOKE, CLUSTER), export) == export["path"]
    with pytest.raises(PipelineError, match=r"cluster.gpus_per_node=1\) but the export .* has no TensorRT-LLM repository; "
                                            r"export with trtllm=true") as err:
        tasks.served_repository(gpu, {**export, "trtllm_path": None})
    assert "\n" not in str(err.value)
    assert dict(helm_values(gpu, "pvc://tuna-checkpoints/x"))["gpu.count"] == 1
    assert "gpu.count" not in dict(helm_values(load_recipe(SMOKE, CLUSTER), "pvc://tuna-checkpoints/x"))

    seen = {}
    monkeypatch.setattr("tuna.serve.deploy.deploy_helm", lambda cfg, release, ns, uri, values, chart: seen.setdefault("uri", uri))
    local_store = load_recipe(SMOKE, [*CLUSTER, "cluster.gpus_per_node=1", "track.tracking_uri=null", f"run.data_dir={tmp_path}"])
    monkeypatch.setattr(tasks, "_load", lambda config, overrides: local_store)
    line = tasks.run_deploy("smoke.yaml", [], "", export, target="helm", repository_pvc="tuna-checkpoints",
                            repository_mount="/mnt/ckpt")
    assert seen["uri"] == "pvc://tuna-checkpoints/smoke/serve/tuna/trtllm/model_repository" and seen["uri"] in line
    with pytest.raises(PipelineError, match=r"repository '/mnt/ckpt/smoke/serve/tuna/trtllm/model_repository' holds no Triton"):
        tasks.run_register("smoke.yaml", [], "", export, {"finer_ood_fine_em": 0.5})   # registers what is served
