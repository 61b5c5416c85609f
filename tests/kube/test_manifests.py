"""manifests/ (kustomize base + dev/prod overlays) and the Milvus Helm values, checked offline.

Both overlays are rendered by the real `kubectl kustomize` (kubectl v1.35); every built-in object passes
kubernetes-validate --strict (Kubernetes 1.33 schemas) and the ClusterTrainingRuntime its CRD schema kept in
platform/tuna/train/crds (tuna.train.cluster.validate); the optional Kueue component (manifests/components/kueue) is
rendered on top of each overlay and its LocalQueue validated against the Kueue CRD kept there. Assertions: Pod Security `restricted` on the namespace and on
every pod template, least-privilege RBAC (no wildcards, Secrets by name), no Secret values in the base, images pinned
(by digest in prod), the NetworkPolicies, names shared with the recipes and the serving chart. The Milvus values
files are parsed (and rendered with the real helm when TUNA_MILVUS_CHART points at a local copy of the milvus chart).
The Dockerfile is checked in tests/containers/test_dockerfile.py.
"""

from __future__ import annotations

import base64
import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tuna.errors import TunaError
from tuna.kube.binaries import helm_binary, kubectl_binary, run_tool
from tuna.train import jobs

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.33"
NAMESPACE = "tuna"
CUSTOM_KINDS = {"ClusterTrainingRuntime", "LocalQueue"}
COMPONENTS = MANIFESTS / "components"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
RUNTIME_COPY = MANIFESTS / "base" / "trainer" / "tuna-deepspeed-distributed.yaml"
SECRETS = {"tuna-mlflow-db", "tuna-s3", "tuna-milvus", "tuna-mlflow"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
PLACEHOLDER_DIGEST = "@sha256:" + "0" * 64
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}

integration = pytest.mark.integration  # starts the real kubectl


# ---------------------------------------------------------------------------------------------- helpers


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = run_tool(kubectl_binary(), ["kustomize", path], what=f"render {path.relative_to(REPO)}")
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(MANIFESTS / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def with_kueue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay plus the optional Kueue component, combined as a user's kustomization would."""
    out = {}
    for name in OVERLAYS:
        tmp = tmp_path_factory.mktemp(f"kueue-{name}")
        (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(MANIFESTS / "overlays" / name, tmp)],  # kustomize takes relative paths only
            "components": [os.path.relpath(COMPONENTS / "kueue", tmp)]}))
        text = run_tool(kubectl_binary(), ["kustomize", tmp], what=f"render overlays/{name} + components/kueue")
        out[name] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(MANIFESTS / "base")


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind}/{name}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod metadata, pod spec) of every pod template: workloads and the runtime's replicated jobs."""
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in WORKLOADS:
            tpl = d["spec"]["template"]
            yield where, tpl.get("metadata", {}), tpl["spec"]
        elif d["kind"] == "CronJob":
            tpl = d["spec"]["jobTemplate"]["spec"]["template"]
            yield where, tpl.get("metadata", {}), tpl["spec"]
        elif d["kind"] == "ClusterTrainingRuntime":
            for job in d["spec"]["template"]["spec"]["replicatedJobs"]:
                tpl = job["template"]["spec"]["template"]
                yield f"{where}[{job['name']}]", tpl.get("metadata", {}), tpl["spec"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What the Pod Security `restricted` profile (v1.33) refuses in this pod spec."""
    bad = []
    pod_sc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            bad.append(f"{flag}: true")
    for vol in spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {vol['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    for c in containers(spec):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile {seccomp!r}")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort {port['hostPort']}")
    return bad


def images(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {f"{where}/{c['name']}": c["image"] for where, _, spec in pod_specs(docs) for c in containers(spec)}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_refs(docs: list[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    """(secret, key, optional) of every secretKeyRef in the pod templates."""
    refs = set()
    for _, _, spec in pod_specs(docs):
        for c in containers(spec):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"], bool(ref.get("optional"))))
    return refs


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a LabelSelector (matchLabels + In/NotIn/Exists/DoesNotExist) select these labels?"""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


# ---------------------------------------------------------------------------------------------- render / validate


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_strict_validation(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    assert len(docs) > 20
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            jobs.validate(doc)  # CRD schema (strict about unknown fields) + the upstream webhook rules
            continue
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION, doc["metadata"]["name"]


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_kueue_component_adds_one_valid_local_queue(rendered: dict[str, list[dict[str, Any]]],
                                                         with_kueue: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    def names(docs: list[dict[str, Any]]) -> set[str]:
        return {f"{d['kind']}/{d['metadata']['name']}" for d in docs}

    docs = with_kueue[overlay]
    assert names(docs) - names(rendered[overlay]) == {"LocalQueue/tuna"}
    queue = one(docs, "LocalQueue", "tuna")
    jobs.validate(queue)  # the Kueue v0.19.2 CRD kept in platform/tuna/train/crds (strict about unknown fields)
    assert queue["apiVersion"] == "kueue.x-k8s.io/v1beta2" and queue["metadata"]["namespace"] == NAMESPACE
    assert queue["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tuna"
    assert queue["spec"] == {"clusterQueue": "tuna-cluster-queue"}  # the admin's ClusterQueue (manifests/README.md)
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            jobs.validate(doc)
        else:
            assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION, doc["metadata"]["name"]


@integration
def test_local_queue_validation_is_live(with_kueue: dict[str, list[dict[str, Any]]]) -> None:
    queue = one(with_kueue["dev"], "LocalQueue", "tuna")
    for edit, words in ((lambda q: q["spec"].update(clusterQueue="Tuna_Queue"), "spec.clusterQueue"),
                        (lambda q: q["spec"].update(clusterqueue="x"), "clusterqueue"),
                        (lambda q: q["spec"].update(stopPolicy="Pause"), "spec.stopPolicy")):
        broken = copy.deepcopy(queue)
        edit(broken)
        with pytest.raises(jobs.ManifestInvalid, match=words):
            jobs.validate(broken)


@integration
def test_the_names_recipes_may_use_are_the_ones_the_manifests_create(rendered: dict[str, list[dict[str, Any]]],
                                                                    with_kueue: dict[str, list[dict[str, Any]]]) -> None:
    """tuna.train.jobs refuses a cluster.service_account / cluster.kueue_queue outside these lists before submitting."""
    for overlay in OVERLAYS:
        accounts = {d["metadata"]["name"] for d in find(rendered[overlay], "ServiceAccount")}
        assert accounts == set(jobs.MANIFEST_SERVICE_ACCOUNTS), overlay
        assert find(rendered[overlay], "LocalQueue") == []  # Kueue stays optional
        assert {d["metadata"]["name"] for d in find(with_kueue[overlay], "LocalQueue")} == set(jobs.MANIFEST_QUEUES)


@integration
def test_strict_validation_is_live(rendered: dict[str, list[dict[str, Any]]]) -> None:
    service = copy.deepcopy(one(rendered["dev"], "Service", "mlflow"))
    service["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    runtime = copy.deepcopy(one(rendered["dev"], "ClusterTrainingRuntime", "tuna-deepspeed-distributed"))
    runtime["spec"]["mlPolicy"]["mpi"]["numProcPerNodes"] = 1
    with pytest.raises(jobs.ManifestInvalid, match="numProcPerNodes"):
        jobs.validate(runtime)


@integration
def test_a_broken_overlay_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(TunaError) as caught:
        run_tool(kubectl_binary(), ["kustomize", tmp_path], what="render broken overlay")
    assert "render broken overlay" in str(caught.value) and "\n" not in str(caught.value)


@integration
def test_objects_per_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def names(docs: list[dict[str, Any]]) -> set[str]:
        return {f"{d['kind']}/{re.sub(r'-[a-z0-9]{10}$', '', d['metadata']['name'])}" for d in docs}

    shared = {
        "Namespace/tuna", "ServiceAccount/tuna-pipeline", "ServiceAccount/tuna-trainer", "ServiceAccount/tuna-serving",
        "ServiceAccount/tuna-mlflow", "ServiceAccount/tuna-postgres", "Role/tuna-pipeline", "RoleBinding/tuna-pipeline",
        "PersistentVolumeClaim/tuna-data", "PersistentVolumeClaim/tuna-checkpoints", "ConfigMap/tuna-mlflow-config",
        "Deployment/mlflow", "Service/mlflow", "StatefulSet/tuna-postgres", "Service/tuna-postgres",
        "NetworkPolicy/default-deny-ingress", "NetworkPolicy/allow-mlflow-from-clients",
        "NetworkPolicy/allow-postgres-from-mlflow", "NetworkPolicy/allow-triton-from-ingress",
        "NetworkPolicy/allow-training-mesh", "NetworkPolicy/allow-dns-egress", "NetworkPolicy/mlflow-egress",
        "NetworkPolicy/postgres-egress", "ClusterTrainingRuntime/tuna-deepspeed-distributed",
    }
    assert names(rendered["dev"]) == shared | {f"Secret/{s}" for s in SECRETS}
    assert names(rendered["prod"]) == shared | {"PodDisruptionBudget/mlflow"}


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaces_and_labels(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for doc in rendered[overlay]:
        meta = doc["metadata"]
        if doc["kind"] in ("Namespace", "ClusterTrainingRuntime"):
            assert "namespace" not in meta, doc["kind"]  # cluster-scoped: kustomize must not stamp a namespace
        else:
            assert meta["namespace"] == NAMESPACE, f"{doc['kind']}/{meta['name']}"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "tuna", f"{doc['kind']}/{meta['name']}"
        if overlay == "prod":
            assert meta["labels"]["tuna-platform/environment"] == "prod", f"{doc['kind']}/{meta['name']}"
        elif doc["kind"] == "Secret":
            assert meta["labels"]["tuna-platform/environment"] == "dev", meta["name"]


# ---------------------------------------------------------------------------------------------- pod security


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_baseline_and_warns_on_restricted(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """KFP's driver/launcher containers meet baseline (kubeflow/pipelines#12782), so the namespace the pipeline's pods
    run in (it holds the PVCs and Secrets they mount) enforces baseline; restricted is audited and warned on, and every
    pod TUNA defines meets it (next test)."""
    labels = one(rendered[overlay], "Namespace", NAMESPACE)["metadata"]["labels"]
    for mode, level in (("enforce", "baseline"), ("audit", "restricted"), ("warn", "restricted")):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == level
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == f"v{K8S_VERSION}"


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_template_is_restricted_compliant(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    specs = list(pod_specs(rendered[overlay]))
    assert {where for where, _, _ in specs} == {
        "Deployment/mlflow", "StatefulSet/tuna-postgres",
        "ClusterTrainingRuntime/tuna-deepspeed-distributed[node]",
        "ClusterTrainingRuntime/tuna-deepspeed-distributed[launcher]"}
    for where, _, spec in specs:
        assert restricted_violations(spec) == [], where
        if not where.startswith("ClusterTrainingRuntime"):  # TrainJob pods get their service account from the job
            assert spec["automountServiceAccountToken"] is False, where
            assert spec["serviceAccountName"] in ("tuna-mlflow", "tuna-postgres"), where
            for c in containers(spec):
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
                assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where


def test_the_restricted_check_is_live() -> None:
    """The unpatched upstream-derived runtime (no securityContext) is refused by the checker, as PSA would."""
    runtime = yaml.safe_load(jobs.RUNTIME_FILE.read_text())
    violations = [v for _, _, spec in pod_specs([runtime]) for v in restricted_violations(spec)]
    assert "node: runAsNonRoot not true" in violations
    assert "node: allowPrivilegeEscalation not false" in violations
    assert "node: capabilities.drop lacks ALL" in violations
    assert "node: seccompProfile None" in violations
    assert restricted_violations({"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
                                  "containers": []}) == ["hostNetwork: true", "volume h: ['hostPath']"]


# ---------------------------------------------------------------------------------------------- the training runtime


def test_runtime_copy_is_identical_to_the_package_runtime() -> None:
    assert RUNTIME_COPY.read_bytes() == jobs.RUNTIME_FILE.read_bytes(), (
        f"{RUNTIME_COPY.relative_to(REPO)} differs from {jobs.RUNTIME_FILE.relative_to(REPO)}: "
        f"copy the package file over it (kustomize cannot read files outside manifests/)")


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_runtime_is_the_package_runtime_plus_security_contexts(
        rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    got = copy.deepcopy(one(rendered[overlay], "ClusterTrainingRuntime", "tuna-deepspeed-distributed"))
    want = yaml.safe_load(jobs.RUNTIME_FILE.read_text())
    labels = got["metadata"]["labels"]
    labels.pop("tuna-platform/environment", None)
    assert labels == want["metadata"]["labels"]
    for job in got["spec"]["template"]["spec"]["replicatedJobs"]:
        spec = job["template"]["spec"]["template"]["spec"]
        assert spec.pop("securityContext")["runAsUser"] == 1000
        for c in spec["containers"]:
            sc = c.pop("securityContext")
            assert sc["runAsUser"] == 1000 and sc["allowPrivilegeEscalation"] is False
            if overlay == "prod":
                assert DIGEST.search(c["image"]) and c["image"].startswith("ghcr.io/tuna-platform/tuna:0.1.0@")
                c["image"] = "ghcr.io/tuna-platform/tuna:0.1.0"
    for job in want["spec"]["template"]["spec"]["replicatedJobs"]:
        spec = job["template"]["spec"]["template"]["spec"]
        del spec["securityContext"]
        for c in spec["containers"]:
            del c["securityContext"]
    assert got == want


# ---------------------------------------------------------------------------------------------- RBAC


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    (role,) = find(docs, "Role")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field] and all("*" not in x for x in rule[field]), rule
        assert not rule.get("nonResourceURLs")
        if "secrets" in rule["resources"]:
            assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"], rule
            assert set(rule["resourceNames"]) == {"tuna-mlflow", "tuna-s3", "tuna-milvus"}
        assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"] and "impersonate" not in rule["verbs"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in role["rules"])

    for group, resource in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs")):
        for verb in ("create", "get", "list", "watch", "delete"):
            assert allowed(group, resource, verb), (resource, verb)
        assert not allowed(group, resource, "update")
    assert allowed("", "pods", "get") and allowed("", "pods", "list") and allowed("", "pods/log", "get")
    assert not allowed("", "pods", "create") and not allowed("", "pods/exec", "create")
    for group, resource in (("apps", "deployments"), ("", "services"), ("autoscaling", "horizontalpodautoscalers"),
                            ("networking.k8s.io", "networkpolicies")):
        for verb in ("get", "list", "create", "patch", "update", "delete"):
            assert allowed(group, resource, verb), (resource, verb)
    assert not allowed("", "secrets", "list") and not allowed("", "secrets", "create")
    assert not allowed("rbac.authorization.k8s.io", "roles", "create")

    (binding,) = find(docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tuna-pipeline"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tuna-pipeline", "namespace": NAMESPACE}]
    accounts = {d["metadata"]["name"]: d for d in find(docs, "ServiceAccount")}
    assert accounts["tuna-pipeline"]["automountServiceAccountToken"] is True
    for name in ("tuna-trainer", "tuna-serving", "tuna-mlflow", "tuna-postgres"):
        assert accounts[name]["automountServiceAccountToken"] is False, name


# ---------------------------------------------------------------------------------------------- secrets


@integration
def test_base_holds_no_secret_values(base: list[dict[str, Any]]) -> None:
    assert not find(base, "Secret")
    for where, _, spec in pod_specs(base):
        for c in containers(spec):
            for name, e in env_of(c).items():
                if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", name):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], f"{where}: {name}"
                value = e.get("value", "")
                assert not re.search(r"://[^/$]*:[^@$]+@", value), f"{where}: {name} embeds a credential"
    text = "".join(p.read_text() for p in (MANIFESTS / "base").rglob("*.yaml"))
    assert "kind: Secret" not in text and "secretGenerator" not in text


@integration
def test_dev_generates_every_referenced_secret_with_placeholders(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["dev"]
    secrets = {d["metadata"]["name"]: d for d in find(docs, "Secret")}
    assert set(secrets) == SECRETS  # plain names: TrainJobs and the serving chart use them outside kustomize
    for name, key, optional in secret_refs(docs):
        assert name in secrets, name
        assert optional or key in secrets[name]["data"], (name, key)
    for name in ("tuna-mlflow-db", "tuna-mlflow"):
        for key, value in secrets[name]["data"].items():
            if "PASSWORD" in key.upper():
                assert "dev-only-insecure" in base64.b64decode(value).decode(), (name, key)
    # the keys tuna.train.cluster puts into every TrainJob (required ones) are all there
    for field, (required, _) in jobs.SECRET_KEYS.items():
        secret = {"mlflow_secret": "tuna-mlflow", "s3_secret": "tuna-s3", "milvus_secret": "tuna-milvus"}[field]
        for key in required or ("MILVUS_TOKEN",):
            assert key in secrets[secret]["data"], (secret, key)


@integration
def test_secrets_example_documents_every_referenced_key(rendered: dict[str, list[dict[str, Any]]]) -> None:
    documented: dict[str, set[str]] = {}
    current = None
    for line in (MANIFESTS / "secrets.example.env").read_text().splitlines():
        if m := re.match(r"# --- (tuna-[a-z0-9-]+):", line):
            current = documented.setdefault(m[1], set())
        elif line and not line.startswith("#"):
            assert current is not None, line
            current.add(line.split("=", 1)[0])
    assert set(documented) == SECRETS
    for overlay in OVERLAYS:
        for name, key, _ in secret_refs(rendered[overlay]):
            assert key in documented[name], (name, key)
    for name in SECRETS:
        generated = one(rendered["dev"], "Secret", name)["data"]
        assert set(generated) == documented[name], name


# ---------------------------------------------------------------------------------------------- images


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    found = images(rendered[overlay])
    assert len(found) == 4
    for where, image in found.items():
        name = image.split("@")[0]
        assert ":" in name.rsplit("/", 1)[-1], f"{where}: {image} has no tag"
        assert not name.endswith(":latest"), f"{where}: {image}"
        if overlay == "prod":
            assert DIGEST.search(image), f"{where}: {image} is not pinned by digest"
        else:
            assert "@" not in image
    repos = {image.split(":")[0] for image in found.values()}
    assert repos == {"ghcr.io/mlflow/mlflow", "docker.io/library/postgres", "ghcr.io/tuna-platform/tuna"}


@integration
def test_prod_digest_placeholders_are_only_the_unreleased_images(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """mlflow and tuna carry the documented all-zero placeholder until the release step pins them; nothing else."""
    placeholders = {image.split(":")[0] for image in images(rendered["prod"]).values()
                    if image.endswith(PLACEHOLDER_DIGEST)}
    assert placeholders <= {"ghcr.io/mlflow/mlflow", "ghcr.io/tuna-platform/tuna"}
    assert "kustomize edit set image" in (MANIFESTS / "README.md").read_text()


# ---------------------------------------------------------------------------------------------- MLflow + Postgres


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    deploy = one(docs, "Deployment", "mlflow")
    spec = deploy["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert re.match(r"ghcr\.io/mlflow/mlflow:v3\.17\.\d+-full(@|$)", c["image"])
    assert c["command"] == ["mlflow", "server"]
    assert "--host=0.0.0.0" in c["args"] and "--port=5000" in c["args"]
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in c["args"]
    assert not any("backend-store-uri" in a for a in c["args"])  # from env: no password on the command line
    env = env_of(c)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == \
        "postgresql+psycopg2://$(DB_USER):$(DB_PASSWORD)@tuna-postgres:5432/mlflow"
    names = list(env)
    assert names.index("DB_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")  # $(VAR) expands earlier vars only
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-mlflow-db", "key": "password"}
    assert env["DB_USER"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-mlflow-db", "key": "username"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "tuna-s3"
    config = one(docs, "ConfigMap", env["MLFLOW_ARTIFACTS_DESTINATION"]["valueFrom"]["configMapKeyRef"]["name"])
    assert config["data"]["artifacts-destination"].startswith("s3://")
    hosts = config["data"]["allowed-hosts"].split(",")
    assert "mlflow.tuna.svc.cluster.local:5000" in hosts and "mlflow:5000" in hosts
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 5000}

    service = one(docs, "Service", "mlflow")
    assert service["spec"]["ports"] == [{"name": "http", "port": 5000, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert selects(deploy["spec"]["selector"], deploy["spec"]["template"]["metadata"]["labels"])


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    sts = one(docs, "StatefulSet", "tuna-postgres")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert re.match(r"docker\.io/library/postgres:17\.\d+-bookworm(@|$)", c["image"])
    env = env_of(c)
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-mlflow-db", "key": "password"}
    assert env["POSTGRES_USER"]["valueFrom"]["secretKeyRef"] == {"name": "tuna-mlflow-db", "key": "username"}
    assert env["POSTGRES_DB"]["value"] == "mlflow" and env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == "/var/lib/postgresql/data" and mounts["run"] == "/var/run/postgresql"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    service = one(docs, "Service", "tuna-postgres")
    assert sts["spec"]["serviceName"] == "tuna-postgres" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == 5432
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    mlflow_uri = env_of(one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0])
    assert "@tuna-postgres:5432/mlflow" in mlflow_uri["MLFLOW_BACKEND_STORE_URI"]["value"]


# ---------------------------------------------------------------------------------------------- storage, HA


def quantity_gi(q: str) -> float:
    m = re.fullmatch(r"(\d+)(Gi|Ti)", q)
    assert m, q
    return int(m[1]) * (1024 if m[2] == "Ti" else 1)


@integration
def test_volumes_per_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in ("tuna-data", "tuna-checkpoints"):
        dev, prod = (one(rendered[o], "PersistentVolumeClaim", name)["spec"] for o in OVERLAYS)
        assert dev["accessModes"] == prod["accessModes"] == ["ReadWriteMany"]
        assert quantity_gi(dev["resources"]["requests"]["storage"]) <= 10
        assert quantity_gi(prod["resources"]["requests"]["storage"]) >= 1024
        assert "storageClassName" not in dev and prod["storageClassName"]
    dev_db, prod_db = (one(rendered[o], "StatefulSet", "tuna-postgres")["spec"]["volumeClaimTemplates"][0]["spec"]
                       for o in OVERLAYS)
    assert quantity_gi(dev_db["resources"]["requests"]["storage"]) < quantity_gi(
        prod_db["resources"]["requests"]["storage"])
    assert prod_db["storageClassName"]


@integration
def test_replicas_and_disruption_budget(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev, prod = (one(rendered[o], "Deployment", "mlflow") for o in OVERLAYS)
    assert dev["spec"]["replicas"] == 1 and "--workers=1" in dev["spec"]["template"]["spec"]["containers"][0]["args"]
    assert prod["spec"]["replicas"] == 2 and "--workers=4" in prod["spec"]["template"]["spec"]["containers"][0]["args"]
    spread = prod["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert not find(rendered["dev"], "PodDisruptionBudget")
    pdb = one(rendered["prod"], "PodDisruptionBudget", "mlflow")
    assert pdb["spec"]["minAvailable"] == 1 < prod["spec"]["replicas"]
    assert selects(pdb["spec"]["selector"], prod["spec"]["template"]["metadata"]["labels"])
    dev_req = dev["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    prod_req = prod["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert dev_req["cpu"] == "100m" and prod_req["cpu"] == "1"


# ---------------------------------------------------------------------------------------------- network policies


def policies(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for d in find(docs, "NetworkPolicy")}


def ingress_allowed(docs: list[dict[str, Any]], target: dict[str, str], source: dict[str, str], port: int,
                    source_namespace: str = NAMESPACE) -> bool:
    """Does some policy let a pod labelled ``source`` (in ``source_namespace``) reach ``target`` on ``port``?"""
    for spec in policies(docs).values():
        if "Ingress" not in spec["policyTypes"] or not selects(spec["podSelector"], target):
            continue
        for rule in spec.get("ingress", []):
            if rule.get("ports") and not any(p["port"] == port for p in rule["ports"]):
                continue
            for peer in rule.get("from", []):
                ns_ok = (selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": source_namespace})
                         if "namespaceSelector" in peer else source_namespace == NAMESPACE)
                pod_ok = selects(peer["podSelector"], source) if "podSelector" in peer else True
                if ns_ok and pod_ok:
                    return True
    return False


@integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    pol = policies(docs)
    deny = pol["default-deny-ingress"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}  # every pod, no rule: nothing allowed

    mlflow = {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/component": "tracking"}
    postgres = {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "database"}
    pipeline = {"app.kubernetes.io/component": "pipeline"}
    trainer = {"app.kubernetes.io/component": "train", "tuna-platform/stage": "2"}  # labels of tuna.train.cluster
    triton = {"app.kubernetes.io/name": "tuna-serving", "app.kubernetes.io/instance": "tuna-serving"}
    stranger = {"app": "something-else"}
    # the pod templates carry the labels the policies select on
    assert mlflow.items() <= one(docs, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"].items()
    assert postgres.items() <= one(docs, "StatefulSet", "tuna-postgres")["spec"]["template"]["metadata"]["labels"].items()

    assert ingress_allowed(docs, mlflow, pipeline, 5000) and ingress_allowed(docs, mlflow, trainer, 5000)
    assert ingress_allowed(docs, mlflow, triton, 5000)  # the chart's init container fetches models from the registry
    assert ingress_allowed(docs, mlflow, pipeline, 5000, source_namespace="kubeflow")
    assert not ingress_allowed(docs, mlflow, stranger, 5000)
    assert not ingress_allowed(docs, mlflow, pipeline, 5000, source_namespace="default")

    assert ingress_allowed(docs, postgres, mlflow, 5432)
    for other in (pipeline, trainer, triton, stranger):
        assert not ingress_allowed(docs, postgres, other, 5432)

    for port in (8000, 8001):
        assert ingress_allowed(docs, triton, {}, port, source_namespace="ingress-nginx")
        assert ingress_allowed(docs, triton, pipeline, port)
    assert not ingress_allowed(docs, triton, stranger, 8001)
    assert not ingress_allowed(docs, triton, {}, 8002, source_namespace="ingress-nginx")

    assert ingress_allowed(docs, trainer, {"app.kubernetes.io/component": "train"}, 2222)  # MPI over SSH
    assert not ingress_allowed(docs, trainer, stranger, 2222)

    dns = pol["allow-dns-egress"]
    assert selects(dns["podSelector"], mlflow) and selects(dns["podSelector"], postgres)
    assert not selects(dns["podSelector"], trainer) and not selects(dns["podSelector"], pipeline)  # their egress stays open
    (rule,) = dns["egress"]
    assert sorted((p["port"], p["protocol"]) for p in rule["ports"]) == [(53, "TCP"), (53, "UDP")]
    assert rule["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert pol["postgres-egress"]["egress"] == [] and pol["postgres-egress"]["policyTypes"] == ["Egress"]
    egress_ports = {p["port"] for r in pol["mlflow-egress"]["egress"] for p in r["ports"]}
    assert egress_ports == {5432, 443, 9000}


# ---------------------------------------------------------------------------------------------- shared names


@integration
@pytest.mark.parametrize("recipe", ["smoke", "mini", "llava7b"])
def test_recipes_cluster_section_names_objects_that_exist(rendered: dict[str, list[dict[str, Any]]],
                                                          recipe: str) -> None:
    c = yaml.safe_load((REPO / "configs" / f"{recipe}.yaml").read_text())["cluster"]
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        assert c["namespace"] == NAMESPACE
        one(docs, "ClusterTrainingRuntime", c["runtime"])
        if c.get("service_account"):
            one(docs, "ServiceAccount", c["service_account"])
        if c.get("kueue_queue"):
            assert c["kueue_queue"] in jobs.MANIFEST_QUEUES, c["kueue_queue"]
        for key in ("data_pvc", "checkpoints_pvc"):
            if c.get(key):
                one(docs, "PersistentVolumeClaim", c[key])
        for key in ("mlflow_secret", "milvus_secret", "s3_secret"):
            if c.get(key):
                assert c[key] in SECRETS, (key, c[key])
        runtime_images = {img.split("@")[0] for where, img in images(docs).items() if "ClusterTrainingRuntime" in where}
        # a GPU recipe runs the CUDA build of the same image (`make image-cuda`: <tag>-cu130): its TrainJob sets
        # trainer.image, which replaces the runtime's default image (the CPU build) in every pod
        want = c["image"].removesuffix("-cu130") if c.get("gpus_per_node") else c["image"]
        assert c["image"] == want or c["image"] == f"{want}-cu130", c["image"]
        assert runtime_images == {want}, runtime_images


@integration
def test_serving_chart_points_at_this_mlflow(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = yaml.safe_load((REPO / "helm" / "tuna-serving" / "values.yaml").read_text())
    uri = values["modelRepository"]["mlflow"]["trackingUri"]
    assert uri == "http://mlflow.tuna.svc.cluster.local:5000"
    for overlay in OVERLAYS:
        (config,) = find(rendered[overlay], "ConfigMap")
        assert "mlflow.tuna.svc.cluster.local:5000" in config["data"]["allowed-hosts"].split(",")
        one(rendered[overlay], "Service", "mlflow")  # mlflow.tuna.svc: the Service name and namespace in the URI


# ---------------------------------------------------------------------------------------------- Milvus values


def milvus_values(env: str) -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / "milvus" / f"values-{env}.yaml").read_text())


def test_milvus_dev_values_are_standalone_without_pulsar_or_kafka() -> None:
    v = milvus_values("dev")
    assert v["cluster"]["enabled"] is False
    assert v["standalone"]["replicas"] == 1 and v["standalone"]["messageQueue"] == "woodpecker"
    for mq in ("pulsarv3", "pulsar", "kafka", "woodpecker"):
        assert v[mq]["enabled"] is False, mq
    assert v["etcd"]["replicaCount"] == 1 and v["minio"]["mode"] == "standalone"
    assert v["standalone"]["persistence"]["enabled"] is True
    assert v["standalone"]["resources"]["requests"]["cpu"] == "500m"


def test_milvus_prod_values_are_a_replicated_persistent_cluster() -> None:
    v = milvus_values("prod")
    assert v["cluster"]["enabled"] is True
    for component in ("proxy", "mixCoordinator", "queryNode", "dataNode", "streamingNode"):
        assert v[component]["replicas"] >= 2, component
        assert v[component]["resources"]["requests"], component
    assert v["mixCoordinator"]["activeStandby"]["enabled"] is True
    assert v["etcd"]["replicaCount"] == 3 and v["etcd"]["persistence"]["enabled"] is True
    assert v["pulsarv3"]["enabled"] is True and v["pulsarv3"]["persistence"] is True
    assert v["kafka"]["enabled"] is False and v["pulsar"]["enabled"] is False
    assert v["minio"]["enabled"] is False and v["externalS3"]["enabled"] is True and v["externalS3"]["useIAM"] is True
    assert "accessKey" not in v["externalS3"] and "secretKey" not in v["externalS3"]  # no credentials in the file
    assert "authorizationEnabled: true" in v["extraConfigFiles"]["user.yaml"]


def test_milvus_values_pin_the_same_image() -> None:
    tags = {env: milvus_values(env)["image"]["all"]["tag"] for env in ("dev", "prod")}
    assert tags["dev"] == tags["prod"] and re.fullmatch(r"v2\.6\.\d+", tags["dev"]), tags
    readme = (MANIFESTS / "README.md").read_text()
    for env in ("dev", "prod"):
        assert f"-f manifests/milvus/values-{env}.yaml" in readme


@integration
@pytest.mark.skipif(not os.environ.get("TUNA_MILVUS_CHART"),
                    reason="set TUNA_MILVUS_CHART to a local copy of the milvus chart (zilliztech/milvus-helm "
                           "charts/milvus with its charts/*.tgz) to render the values with the real helm")
@pytest.mark.parametrize("env", ["dev", "prod"])
def test_milvus_values_render_with_the_real_chart(env: str) -> None:
    out = run_tool(helm_binary(), ["template", "milvus", os.environ["TUNA_MILVUS_CHART"], "-n", "milvus",
                                   "-f", MANIFESTS / "milvus" / f"values-{env}.yaml"], what=f"render milvus {env}")
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION, doc["metadata"]["name"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap"
                                 and d["metadata"]["name"] == "milvus")["data"]["default.yaml"])
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert "milvus" in services  # http://milvus.milvus.svc.cluster.local:19530
    if env == "dev":
        assert set(deployments) == {"milvus-standalone", "milvus-minio"}
        assert config["mq"]["type"] == "woodpecker"
        assert not any("pulsar" in d["metadata"]["name"] or "kafka" in d["metadata"]["name"] for d in docs)
    else:
        assert {"milvus-proxy", "milvus-querynode", "milvus-datanode", "milvus-mixcoord"} <= set(deployments)
        assert deployments["milvus-querynode"]["spec"]["replicas"] == 3
        assert config["mq"]["type"] == "pulsar" and config["minio"]["useIAM"] is True
