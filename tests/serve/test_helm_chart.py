"""The tuna-serving Helm chart, rendered by the real helm v4 and validated offline.

`helm lint --strict` and `helm template` for the defaults and every ci/ scenario; each rendered object checked by
kubernetes-validate --strict (Kubernetes 1.33 schemas; the ServiceMonitor, a custom resource, against the
required fields of its CRD); assertions on the content; values.schema.json and the template checks refusing bad
values; the init containers' fetch scripts run under /bin/sh with stand-in `aws` / `mlflow` commands.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tuna.errors import TunaError
from tuna.kube.binaries import helm_binary, run_tool
from tuna.serve.model_config import VLLM_ENV_FILE

pytestmark = pytest.mark.integration  # starts the real helm binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tuna-serving"
K8S_VERSION = "1.33"
VLLM_SERVING_IMAGE = "ghcr.io/tuna-platform/tuna-serving:0.1.0-vllm"   # the Makefile's VLLM_SERVING_IMAGE (make image-vllm)
RELEASE, NAMESPACE = "tuna-serving", "tuna"
SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    "cpu": ["-f", str(CHART / "ci" / "cpu-values.yaml")],
    "gpu": ["-f", str(CHART / "ci" / "gpu-trtllm-values.yaml")],
    "gpu-vllm": ["-f", str(CHART / "ci" / "gpu-vllm-values.yaml")],
}
CUDA_SERVING_IMAGE = "ghcr.io/tuna-platform/tuna-serving:0.1.0-vllm-cu130"   # the Makefile's (make image-serving-cuda)
TRTLLM_SERVING_IMAGE = "ghcr.io/tuna-platform/tuna-serving:0.1.0-trtllm"      # the Makefile's (make image-serving-trtllm)
# Required structure of monitoring.coreos.com/v1 ServiceMonitor (prometheus-operator CRD), the fields we set.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"],
                             "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                                            "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                                   "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "metricRelabelings": {"type": "array"}}}},
            },
        },
    },
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def template(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = run_tool(helm, ["template", RELEASE, CHART, "--namespace", NAMESPACE, *args], what="render tuna-serving")
    return [doc for doc in yaml.safe_load_all(out) if doc]


def refusal(helm: Path, *args: str) -> str:
    with pytest.raises(TunaError) as caught:
        template(helm, *args)
    return str(caught.value)


@pytest.fixture(scope="module")
def rendered(helm: Path) -> dict[str, list[dict[str, Any]]]:
    return {name: template(helm, *args) for name, args in SCENARIOS.items()}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def triton(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = [c for c in pod(docs)["containers"] if c["name"] == "triton"]
    return c


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------- lint / validate


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(helm: Path, scenario: str) -> None:
    out = run_tool(helm, ["lint", "--strict", CHART, *SCENARIOS[scenario]], what=f"lint {scenario}")
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_passes_kubernetes_validate_strict(rendered: dict[str, list[dict[str, Any]]],
                                                        scenario: str) -> None:
    docs = rendered[scenario]
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        labels = doc["metadata"]["labels"]
        assert labels["helm.sh/chart"] == "tuna-serving-0.1.0"
        assert labels["app.kubernetes.io/name"] == "tuna-serving"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_strict_validation_is_live(rendered: dict[str, list[dict[str, Any]]]) -> None:
    service = dict(one(rendered["defaults"], "Service"))
    service["spec"] = {**service["spec"], "portz": []}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)


def test_objects_per_scenario(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in rendered.items()}
    assert kinds["defaults"] == kinds["cpu"] == ["Deployment", "Service", "ServiceAccount"]
    assert kinds["gpu"] == kinds["gpu-vllm"] == sorted(["Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler",
                                                        "ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget"])


# ---------------------------------------------------------------------------------------------- content


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_service_and_container_ports_are_named(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    docs = rendered[scenario]
    service = one(docs, "Service")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}
    assert {p["name"]: p["containerPort"] for p in triton(docs)["ports"]} == {"http": 8000, "grpc": 8001,
                                                                               "metrics": 8002}
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one(docs, "Deployment")["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tritonserver_command_line(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    c = triton(rendered[scenario])
    assert c["command"] == (["/opt/nvidia/nvidia_entrypoint.sh", "tritonserver"] if scenario == "gpu"
                            else ["tritonserver"])
    for flag in ("--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"):
        assert flag in c["args"]
    assert {"name": "model-repository", "mountPath": "/models"}.items() <= c["volumeMounts"][0].items()
    if scenario.startswith("gpu"):
        assert c["args"][-1] == "--backend-config=python,shm-default-byte-size=33554432"  # triton.extraArgs
        assert "--exit-timeout-secs=60" in c["args"]


INFERENCE_PROBE = ["python", "-m", "tuna.serve.probe", "--url", "127.0.0.1:8001", "--model", "tuna", "--deadline", "10"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_ask_a_real_question_after_startup_saw_the_models_loaded(rendered: dict[str, list[dict[str, Any]]],
                                                                        scenario: str) -> None:
    """Readiness and liveness run the real-inference probe (Triton's endpoints stay 200 with a dead step; the probe
    itself is run against a real server by tests/serve/test_faults.py); startup waits on HTTP readiness."""
    c = triton(rendered[scenario])
    ready = "/v2/health/ready" if scenario == "defaults" else "/v2/models/tuna/ready"  # ci files: probes.modelReady
    assert c["startupProbe"]["httpGet"] == {"path": ready, "port": "http"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"] == INFERENCE_PROBE and "httpGet" not in c[probe]
        assert c[probe]["timeoutSeconds"] > int(INFERENCE_PROBE[-1])
    assert c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] <= 10   # out of the Service fast
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] <= 30    # then restarted


def test_inference_probes_can_be_turned_off_for_http_checks(helm: Path) -> None:
    c = triton(template(helm, "--set", "probes.inference.enabled=false", "--set", "probes.modelReady=true"))
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"} and "exec" not in c["livenessProbe"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/models/tuna/ready", "port": "http"}
    c = triton(template(helm, "--set", "model.name=other", "--set", "probes.inference.command={/opt/py/bin/python,-m,tuna.serve.probe}"))
    assert c["readinessProbe"]["exec"]["command"] == ["/opt/py/bin/python", *INFERENCE_PROBE[1:6], "other", "--deadline", "10"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_non_root_everywhere(rendered: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    spec = pod(rendered[scenario])
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    tmp = {v["name"]: v for v in spec["volumes"]}["tmp"]
    assert "emptyDir" in tmp
    for c in containers(spec):
        csc = c["securityContext"]
        assert csc["runAsNonRoot"] is True and csc["runAsUser"] == 1000, c["name"]
        assert csc["readOnlyRootFilesystem"] is True, c["name"]
        assert csc["allowPrivilegeEscalation"] is False, c["name"]
        assert csc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert csc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], c["name"]


def test_gpu_only_in_the_gpu_scenario(rendered: dict[str, list[dict[str, Any]]]) -> None:
    gpu = pod(rendered["gpu"])
    assert triton(rendered["gpu"])["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert triton(rendered["gpu"])["image"] == TRTLLM_SERVING_IMAGE
    assert "NVIDIA_VISIBLE_DEVICES" not in env(triton(rendered["gpu"]))
    assert triton(rendered["gpu-vllm"])["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton(rendered["gpu-vllm"])["image"] == CUDA_SERVING_IMAGE and "NVIDIA_VISIBLE_DEVICES" not in env(triton(rendered["gpu-vllm"]))
    for scenario in ("defaults", "cpu"):
        spec = pod(rendered[scenario])
        for c in containers(spec):
            for section in c["resources"].values():
                assert "nvidia.com/gpu" not in section, (scenario, c["name"])
        assert triton(rendered[scenario])["image"] == {"defaults": "ghcr.io/tuna-platform/tuna-serving:0.1.0",
                                                       "cpu": VLLM_SERVING_IMAGE}[scenario]
        assert env(triton(rendered[scenario]))["NVIDIA_VISIBLE_DEVICES"]["value"] == "void"
        assert "tolerations" not in spec and "nodeSelector" not in spec


def test_milvus_uri_token_secret_and_datastore(rendered: dict[str, list[dict[str, Any]]]) -> None:
    gpu = env(triton(rendered["gpu"]))
    assert gpu["MILVUS_URI"]["value"] == "http://milvus-proxy.milvus.svc.cluster.local:19530"
    assert gpu["MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "milvus-credentials", "key": "token",
                                                                "optional": False}
    assert "value" not in gpu["MILVUS_TOKEN"]  # never a literal token
    assert gpu["TUNA_DATASTORE_DEFAULT"]["value"] == "A"
    cpu = env(triton(rendered["cpu"]))
    assert cpu["MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "milvus-token", "key": "token",
                                                                "optional": True}
    assert "MILVUS_TOKEN" not in env(triton(rendered["defaults"]))  # no Secret named by default
    assert env(triton(rendered["defaults"]))["MILVUS_URI"]["value"].startswith("http://")


def test_s3_init_container(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod(rendered["gpu"])
    (init,) = spec["initContainers"]
    assert init["name"] == "fetch-model-repository" and init["image"].startswith("public.ecr.aws/aws-cli/aws-cli:")
    assert 'aws s3 sync "${src}" /models' in init["args"][0]
    e = env(init)
    assert (e["S3_BUCKET"]["value"], e["S3_PREFIX"]["value"]) == ("tuna-models", "llava7b/trtllm/model_repository")
    assert e["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert e["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert e["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-s3",
                                                                       "key": "AWS_SECRET_ACCESS_KEY"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-repository"]["emptyDir"] == {"sizeLimit": "40Gi"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}


def test_pvc_copy_init_container(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod(rendered["cpu"])
    (init,) = spec["initContainers"]
    assert "cp -R /source/. /models/" in init["args"][0]
    assert {"name": "model-source", "mountPath": "/source", "readOnly": True,
            "subPath": "data/mini/serve/tuna/model_repository"} in init["volumeMounts"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-source"]["persistentVolumeClaim"] == {"claimName": "tuna-data", "readOnly": True}
    assert "emptyDir" in volumes["model-repository"]


def test_pvc_mount_mode_has_no_init_container(helm: Path) -> None:
    docs = template(helm, "--set", "modelRepository.pvc.mode=mount", "--set", "modelRepository.pvc.subPath=repo")
    spec = pod(docs)
    assert "initContainers" not in spec
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True, "subPath": "repo"} in \
        triton(docs)["volumeMounts"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == "tuna-model-repository"
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_mlflow_init_container(helm: Path) -> None:
    docs = template(helm, "--set", "modelRepository.source=mlflow", "--set", "modelRepository.mlflow.alias=champion",
                    "--set", "modelRepository.mlflow.credentialsSecret=mlflow-auth")
    (init,) = pod(docs)["initContainers"]
    assert 'mlflow artifacts download --artifact-uri "${src}"' in init["args"][0]
    assert 'src="models:/${MLFLOW_MODEL}@${MLFLOW_ALIAS}"' in init["args"][0]
    e = env(init)
    assert e["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.tuna.svc.cluster.local:5000"
    assert (e["MLFLOW_MODEL"]["value"], e["MLFLOW_ALIAS"]["value"]) == ("tuna", "champion")
    assert init["envFrom"] == [{"secretRef": {"name": "mlflow-auth"}}]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_hpa_service_monitor_network_policy_pdb(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    assert "replicas" not in one(docs, "Deployment")["spec"]  # the HPA owns it
    assert one(rendered["defaults"], "Deployment")["spec"]["replicas"] == 1
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 80}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "triton_queue_duration_us"

    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]

    np = one(docs, "NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    for rule in np["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= {"http", "grpc", "metrics"}
    assert {p["port"] for p in np["ingress"][0]["ports"]} == {"http", "grpc", "metrics"}
    assert [p["port"] for p in np["ingress"][1]["ports"]] == ["metrics"]  # Prometheus: metrics only
    egress = {(p["port"], p["protocol"]) for rule in np["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (19530, "TCP"), (443, "TCP")}

    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb == {"minAvailable": 1, "selector": {"matchLabels": one(docs, "Service")["spec"]["selector"]}}


def test_notes_explain_how_to_call_the_service(helm: Path) -> None:
    out = run_tool(helm, ["install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client",
                          *SCENARIOS["gpu"]], what="helm install --dry-run")
    notes = out.split("NOTES:", 1)[1]
    assert f"tuna ask --url {RELEASE}.{NAMESPACE}.svc.cluster.local:8001" in notes
    assert f"port-forward service/{RELEASE} 8001:8001 8000:8000" in notes
    assert "/v2/models/tuna/ready" in notes
    assert "tuna probe --url localhost:8001" in notes and "the kubelet restarts the container" in notes


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "replicaCount=-1"], "at '/replicaCount': minimum: got -1, want 0"),
    (["--set", "modelRepository.source=ftp"], "at '/modelRepository/source': value must be one of 's3', 'mlflow', 'pvc'"),
    (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
    (["--set", "gpu.count=-1"], "at '/gpu/count'"),
    (["--set", "service.ports.grpc=70000"], "at '/service/ports/grpc': maximum"),
    (["--set", "triton.modelControlMode=lazy"], "at '/triton/modelControlMode'"),
    (["--set", "milvus.uri=milvus:19530"], "at '/milvus/uri'"),
    (["--set", "probes.inference.command=null"], "at '/probes/inference'"),
    (["--set", "modelRepository.s3.bucket=x", "--set", "modelRepository.s3.credentialz=y"],
     "additional properties 'credentialz' not allowed"),
], ids=["negative-replicas", "unknown-source", "unknown-key", "negative-gpus", "port-range", "control-mode",
        "milvus-uri-scheme", "probe-command", "nested-unknown-key"])
def test_schema_refuses_bad_values(helm: Path, args: list[str], expected: str) -> None:
    msg = refusal(helm, *args)
    assert "values don't meet the specifications of the schema" in msg
    assert expected in msg
    assert "\n" not in msg


def test_schema_refuses_an_unquoted_numeric_image_tag(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("image:\n  tag: 24.10\n")  # YAML reads 24.1: would pull the wrong image
    assert "at '/image/tag'" in refusal(helm, "-f", str(values))


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "modelRepository.source=s3"], "modelRepository.s3.bucket is empty"),
    (["--set", "modelRepository.pvc.claimName="], "modelRepository.pvc.claimName is empty"),
    (["--set", "autoscaling.enabled=true", "--set", "resources.requests.cpu=null"],
     "autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu"),
    (["--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=5", "--set", "autoscaling.maxReplicas=2"],
     "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (2)"),
    (["--set", "triton.exitTimeoutSeconds=90"], "triton.exitTimeoutSeconds (90) must be below terminationGracePeriodSeconds"),
    (["--set", "probes.inference.deadlineSeconds=15"], "probes.inference.deadlineSeconds (15) must be below probes.readiness.timeoutSeconds (15)"),
], ids=["s3-without-bucket", "pvc-without-claim", "hpa-without-cpu-request", "hpa-min-above-max", "exit-timeout", "probe-deadline"])
def test_templates_refuse_inconsistent_values(helm: Path, args: list[str], expected: str) -> None:
    msg = refusal(helm, *args)
    assert expected in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------- fetch scripts


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\nset -eu\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_fetch(init: dict[str, Any], tmp: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the init container's script under /bin/sh with /models and /source moved below ``tmp``."""
    script = init["args"][0].replace("/models", str(tmp / "models")).replace("/source", str(tmp / "source"))
    (tmp / "models").mkdir(exist_ok=True)
    values = {k: v["value"] for k, v in env(init).items() if "value" in v}
    run_env = {"PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", **values, **extra_env, "HOME": str(tmp)}
    return subprocess.run(["/bin/sh", "-c", script, *init["args"][1:]], env=run_env, capture_output=True, check=False,
                          text=True, timeout=60)


def _repository(root: Path, with_ensemble: bool = True) -> None:
    (root / "retrieval" / "1").mkdir(parents=True)
    (root / "retrieval" / "config.pbtxt").write_text('name: "retrieval"\nbackend: "python"\n')
    if with_ensemble:
        (root / "tuna").mkdir()
        (root / "tuna" / "config.pbtxt").write_text('name: "tuna"\nplatform: "ensemble"\n')


@pytest.mark.parametrize("complete", [True, False], ids=["complete", "missing-ensemble"])
def test_s3_fetch_script(helm: Path, tmp_path: Path, complete: bool) -> None:
    docs = template(helm, "--set", "modelRepository.source=s3", "--set", "modelRepository.s3.bucket=models",
                    "--set", "modelRepository.s3.prefix=/tuna/repo", "--set-json",
                    'modelRepository.s3.extraArgs=["--exclude","*.onnx"]')
    (init,) = pod(docs)["initContainers"]
    _repository(tmp_path / "s3" / "models" / "tuna" / "repo", with_ensemble=complete)
    (tmp_path / "bin").mkdir()
    _fake(tmp_path / "bin", "aws", 'echo "$@" > "$FAKE_S3/../aws-args"\n'
                                   '[ "$1 $2" = "s3 sync" ]; cp -R "$FAKE_S3/${3#s3://}/." "$4"\n')
    done = _run_fetch(init, tmp_path, {"FAKE_S3": str(tmp_path / "s3")})
    assert (tmp_path / "aws-args").read_text().split() == [
        "s3", "sync", "s3://models/tuna/repo", str(tmp_path / "models"), "--only-show-errors", "--no-progress",
        "--exclude", "*.onnx"]
    if complete:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "models" / "tuna" / "config.pbtxt").is_file()
    else:
        assert done.returncode == 1
        assert "has no tuna/config.pbtxt (model.name); it holds: retrieval" in done.stderr


@pytest.mark.parametrize("artifact_path", ["", "model_repository"])
def test_mlflow_fetch_script(helm: Path, tmp_path: Path, artifact_path: str) -> None:
    docs = template(helm, "--set", "modelRepository.source=mlflow",
                    "--set", f"modelRepository.mlflow.artifactPath={artifact_path}")
    (init,) = pod(docs)["initContainers"]
    version = tmp_path / "registry" / "tuna@production"  # what `mlflow artifacts download` writes for the URI
    _repository(version / artifact_path if artifact_path else version)
    (version / "MLmodel").write_text("artifact_path: model\n")
    (tmp_path / "bin").mkdir()
    # `mlflow artifacts download --artifact-uri models:/N@A --dst-path D` puts the version's artifacts into D.
    _fake(tmp_path / "bin", "mlflow", '[ "$1 $2 $3 $5" = "artifacts download --artifact-uri --dst-path" ]\n'
                                      'mkdir -p "$6"; cp -R "$FAKE_REGISTRY/${4#models:/}/." "$6"\n')
    done = _run_fetch(init, tmp_path, {"FAKE_REGISTRY": str(tmp_path / "registry")})
    assert done.returncode == 0, done.stderr
    models = tmp_path / "models"
    assert (models / "tuna" / "config.pbtxt").is_file() and (models / "retrieval" / "config.pbtxt").is_file()
    assert not (models / ".mlflow-download").exists()
    assert (models / "MLmodel").exists() == (artifact_path == "")  # outside artifactPath: dropped


@pytest.mark.parametrize("exported", ["vllm", "hf"])
def test_pvc_copy_fetch_script(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path, exported: str) -> None:
    """The cpu scenario (model.engine vllm) takes a repository exported with serve.engine=vllm (its tensorrt_llm step
    carries the vLLM execution environment) and refuses an hf export in one line naming both engines."""
    (init,) = pod(rendered["cpu"])["initContainers"]
    _repository(tmp_path / "source")
    if exported == "vllm":
        (tmp_path / "source" / "tensorrt_llm").mkdir()
        (tmp_path / "source" / "tensorrt_llm" / VLLM_ENV_FILE).write_bytes(b"")
    (tmp_path / "bin").mkdir()
    done = _run_fetch(init, tmp_path, {})
    if exported == "hf":
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            "error: the model repository from pvc tuna-data/data/mini/serve/tuna/model_repository was exported with "
            "serve.engine=hf but model.engine is vllm; deploy an export for vllm or set model.engine=hf (vllm needs the "
            "serving-vllm image)"]
        return
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["retrieval", "tensorrt_llm", "tuna"]
    assert "model repository ready: retrieval tensorrt_llm tuna" in done.stdout


def test_the_cpu_scenario_runs_the_serving_vllm_image_with_its_engine(rendered: dict[str, list[dict[str, Any]]],
                                                                      helm: Path, tmp_path: Path) -> None:
    """ci/cpu-values.yaml: the CPU serving image with vLLM (the Makefile's image-vllm) and model.engine vllm, checked by
    the fetch step; the defaults stay on the plain serving image and hf; a vllm export under engine hf is refused."""
    makefile = (REPO / "Makefile").read_text()
    assert f"VLLM_SERVING_IMAGE ?= {VLLM_SERVING_IMAGE}\n" in makefile
    assert triton(rendered["cpu"])["image"] == VLLM_SERVING_IMAGE
    (init,) = pod(rendered["cpu"])["initContainers"]
    assert env(init)["ENGINE"]["value"] == "vllm" and env(init)["VERIFY"]["value"] == "true"
    assert {v["name"]: v for v in pod(rendered["cpu"])["volumes"]}["dshm"]["emptyDir"]["sizeLimit"] == "1Gi"
    assert triton(rendered["cpu"])["resources"] == {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "6Gi"}}
    assert triton(rendered["defaults"])["image"] == "ghcr.io/tuna-platform/tuna-serving:0.1.0"
    assert env(pod(rendered["defaults"])["initContainers"][0])["ENGINE"]["value"] == "hf"
    assert "at '/model/engine': value must be one of 'hf', 'vllm'" in refusal(helm, "--set", "model.engine=trtllm")
    (hf_init,) = pod(template(helm, "-f", str(CHART / "ci" / "cpu-values.yaml"), "--set", "model.engine=hf"))["initContainers"]
    _repository(tmp_path / "source")
    (tmp_path / "source" / "tensorrt_llm").mkdir()
    (tmp_path / "source" / "tensorrt_llm" / VLLM_ENV_FILE).write_bytes(b"")
    (tmp_path / "bin").mkdir()
    done = _run_fetch(hf_init, tmp_path, {})
    assert done.returncode == 1 and "exported with serve.engine=vllm but model.engine is hf" in done.stderr, done.stderr


def test_the_gpu_vllm_scenario_runs_the_cuda_serving_image_with_its_engine(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """ci/gpu-vllm-values.yaml: the GPU serving image the Makefile's image-serving-cuda builds (CUDA torch + CUDA vllm,
    no NGC base, so no NGC entrypoint or pull secret), model.engine vllm checked by the fetch step, one GPU."""
    assert f"CUDA_SERVING_IMAGE ?= {CUDA_SERVING_IMAGE}\n" in (REPO / "Makefile").read_text()
    spec, c = pod(rendered["gpu-vllm"]), triton(rendered["gpu-vllm"])
    assert c["command"] == ["tritonserver"] and "imagePullSecrets" not in spec
    (init,) = spec["initContainers"]
    assert env(init)["ENGINE"]["value"] == "vllm"
    assert env(init)["S3_PREFIX"]["value"] == "llava7b/vllm/model_repository"
    assert spec["runtimeClassName"] == "nvidia" and spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


# ---------------------------------------------------------------------------------------------- documentation


def test_every_values_key_is_documented() -> None:
    """Each key of values.yaml has a comment above it or on its line, or sits inside a block documented as a whole
    (a ``# --`` comment above a map, the helm-docs convention, e.g. ``resources``)."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented as a whole) of the enclosing keys
    undocumented = []
    for n, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        block = []  # the comment lines right above the key
        for k in range(n - 1, -1, -1):
            if not lines[k].strip().startswith("#"):
                break
            block.append(lines[k].strip())
        commented = bool(block) or " # " in line
        whole = any(c.startswith("# --") for c in block)
        if not commented and not any(doc for _, doc in stack):
            undocumented.append(f"line {n + 1}: {stripped}")
        stack.append((indent, whole))
    assert not undocumented, "undocumented values:\n" + "\n".join(undocumented)
