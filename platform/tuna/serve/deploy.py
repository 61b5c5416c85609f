"""Deploy an exported model repository to Kubernetes: ``helm upgrade --install tuna-serving helm/tuna-serving``.

What the pipeline's ``deploy`` task runs on a cluster (``target="helm"``); locally it runs the serve demo instead
(:func:`tuna.serve.local.demo`). The chart fetches the repository at pod start from one of three sources, named
here by a URI:

==========================  ================================================================================
``pvc://<claim>/<subpath>``  ``modelRepository.source=pvc``: the folder ``<subpath>`` of an existing claim
                             (the pipeline exports to its checkpoints PVC; :func:`pvc_uri` builds the URI)
``models:/<name>@<alias>``   ``modelRepository.source=mlflow``: the registered version carrying ``<alias>``
                             (what the pipeline's ``register_model`` task returns)
``s3://<bucket>/<prefix>``   ``modelRepository.source=s3``: ``aws s3 sync`` of that prefix
==========================  ================================================================================

The rest of the values come from the recipe: the serving image (``cluster.serving_image``; with serve.engine=vllm the
serving-vllm image, which holds the vLLM venv) and the LLM engine (``serve.engine`` -> ``model.engine``), the Milvus URI and token
Secret (``index.uri``, ``cluster.milvus_secret`` / ``index.token_env``), the default datastore
(``serve.datastore``) and the MLflow / S3 credential Secrets. ``values_files`` (``-f``) come first, so the
``--set`` values computed here win. :func:`helm_upgrade_command` is pure (tested offline by rendering the chart
with the same ``--set`` flags); :func:`deploy_helm` runs it with the helm v4 binary of :mod:`tuna.kube.binaries`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tuna.errors import TunaError
from tuna.recipe import Recipe

RELEASE = "tuna-serving"
CHART = "helm/tuna-serving"  # relative to the repository (the image's workdir on a cluster)
HELM_TIMEOUT = "15m0s"       # loading a 7B LM into TensorRT-LLM (GPU pods) takes minutes
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class DeployError(TunaError):
    """The release cannot be deployed as asked (bad repository URI, missing chart, no Milvus server)."""


def _image(ref: str) -> list[tuple[str, Any]]:
    """``repo:tag`` or ``repo@sha256:...`` -> the chart's image.repository / image.tag / image.digest."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return [("image.repository", repo), ("image.digest", digest)]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return [("image.repository", ref[:colon]), ("image.tag", ref[colon + 1:])]
    return [("image.repository", ref)]


def repository_values(cfg: Recipe, repository_uri: str) -> list[tuple[str, Any]]:
    """The chart's ``modelRepository.*`` values for ``repository_uri`` (pvc://, models:/ or s3://)."""
    uri = repository_uri.strip()
    if uri.startswith("pvc://"):
        claim, _, sub = uri.removeprefix("pvc://").partition("/")
        if not _DNS_SUBDOMAIN.match(claim):
            raise DeployError(f"repository {uri!r}: {claim!r} is not a PersistentVolumeClaim name; "
                              f"write pvc://<claim>/<folder holding the repository>")
        return [("modelRepository.source", "pvc"), ("modelRepository.pvc.claimName", claim),
                ("modelRepository.pvc.subPath", sub.strip("/"))]
    if uri.startswith("models:/"):
        name, at, alias = uri.removeprefix("models:/").partition("@")
        if not name or not at or not alias:
            raise DeployError(f"repository {uri!r}: write models:/<registered model>@<alias> (the register_model output)")
        tracking = cfg.cluster.mlflow_tracking_uri or cfg.track.tracking_uri
        if not tracking or not tracking.startswith(("http://", "https://")):
            raise DeployError(f"repository {uri!r} is in the MLflow registry but the recipe names no MLflow server "
                              f"(track.tracking_uri / cluster.mlflow_tracking_uri = {tracking!r}); the serving pods "
                              f"cannot read a local store: set one to http://mlflow.<namespace>.svc:5000")
        return [("modelRepository.source", "mlflow"), ("modelRepository.mlflow.trackingUri", tracking),
                ("modelRepository.mlflow.registeredModel", name), ("modelRepository.mlflow.alias", alias),
                ("modelRepository.mlflow.artifactPath", ""),
                ("modelRepository.mlflow.credentialsSecret", cfg.cluster.mlflow_secret or "")]
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise DeployError(f"repository {uri!r}: write s3://<bucket>/<prefix>")
        return [("modelRepository.source", "s3"), ("modelRepository.s3.bucket", bucket),
                ("modelRepository.s3.prefix", prefix.strip("/")),
                ("modelRepository.s3.credentialsSecret.name", cfg.cluster.s3_secret or "")]
    raise DeployError(f"repository {uri!r}: unknown scheme; use pvc://<claim>/<path>, models:/<name>@<alias> or "
                      f"s3://<bucket>/<prefix>")


SERVICE_ACCOUNT = "tuna-serving"   # manifests/base/rbac.yaml
HELM_DRIVER = "configmap"


def helm_values(cfg: Recipe, repository_uri: str) -> list[tuple[str, Any]]:
    """Every value the deploy sets, in order: image, LLM engine, Milvus, datastore, model repository."""
    if not cfg.index.uri:
        raise DeployError("index.uri is null (Milvus Lite folders on this machine): the served retrieval step on "
                          "Kubernetes needs a Milvus server; set index.uri=http://<milvus service>:19530")
    gpu = cfg.cluster.gpus_per_node > 0
    return [*_image(cfg.cluster.serving_image),
            # the CPU repository's LLM step runs serve.engine (the chart's fetch step checks it); a GPU recipe serves the
            # TensorRT-LLM repository, which is neither: the chart's default (no vLLM environment expected) stays
            *([] if gpu else [("model.engine", cfg.serve.engine)]),
            ("milvus.uri", cfg.index.uri),
            ("milvus.tokenSecret.name", cfg.cluster.milvus_secret or ""),
            ("milvus.tokenSecret.key", cfg.index.token_env),
            ("datastore.default", cfg.serve.datastore or "A"),
            # manifests/ creates the serving ServiceAccount; the pipeline's Role may not create one
            ("serviceAccount.create", False), ("serviceAccount.name", SERVICE_ACCOUNT),
            # a GPU recipe serves the TensorRT-LLM repository: one engine (tensor_parallel_size 1) = one GPU per pod
            *([("gpu.count", 1)] if gpu else []),
            *repository_values(cfg, repository_uri)]


def _escape(value: str) -> str:
    """A --set value as helm's strvals parser reads it literally (backslashes and commas escaped)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def set_args(values: Sequence[tuple[str, Any]]) -> list[str]:
    """``--set-string key=value`` for strings (a tag "1" stays a string), ``--set`` for numbers and booleans."""
    out: list[str] = []
    for key, value in values:
        if isinstance(value, bool):
            out += ["--set", f"{key}={'true' if value else 'false'}"]
        elif isinstance(value, (int, float)):
            out += ["--set", f"{key}={value}"]
        else:
            out += ["--set-string", f"{key}={_escape(str(value))}"]
    return out


def helm_upgrade_command(cfg: Recipe, release: str, namespace: str, repository_uri: str,
                         values_files: Sequence[str | Path] = (), chart: str | Path = CHART,
                         timeout: str = HELM_TIMEOUT) -> list[str]:
    """``helm upgrade --install <release> <chart> -n <namespace> --wait=watcher --rollback-on-failure -f ... --set ...``.

    Pure: nothing is run or read. The first item is ``helm`` (:func:`deploy_helm` puts the real binary there).
    """
    if not _DNS_LABEL.match(release) or len(release) > 53:
        raise DeployError(f"release {release!r}: a Helm release name is a lower-case DNS label of <= 53 characters")
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise DeployError(f"namespace {namespace!r}: must be a Kubernetes namespace name (lower-case DNS label)")
    cmd = ["helm", "upgrade", "--install", release, str(chart), "--namespace", namespace,
           "--wait=watcher", "--timeout", timeout, "--rollback-on-failure", "--history-max", "10"]
    for f in values_files:
        cmd += ["-f", str(f)]
    return cmd + set_args(helm_values(cfg, repository_uri))


def pvc_uri(path: str | Path, claim: str, mount: str) -> str:
    """``pvc://<claim>/<path relative to mount>`` for a folder under the claim's mount path."""
    p, m = posixpath.normpath(str(path)), posixpath.normpath(mount)
    if not (p + "/").startswith(m.rstrip("/") + "/"):
        raise DeployError(f"repository {str(path)!r} is not under {mount!r} where claim {claim!r} is mounted; "
                          f"export it onto that claim (cluster.checkpoints_mount) or deploy from MLflow")
    return f"pvc://{claim}/{PurePosixPath(p).relative_to(m)}"


def deploy_helm(cfg: Recipe, release: str, namespace: str, repository_uri: str,
                values_files: Sequence[str | Path] = (), chart: str | Path = CHART, timeout: float = 1200.0) -> str:
    """Run :func:`helm_upgrade_command` with the real helm; returns helm's output (a one-line TunaError on failure)."""
    from tuna.kube.binaries import helm_binary, run_tool

    if not (Path(chart) / "Chart.yaml").is_file():
        raise DeployError(f"chart {str(chart)!r} has no Chart.yaml; pass the tuna-serving chart folder "
                          f"(helm/tuna-serving in the repository)")
    for f in values_files:
        if not Path(f).is_file():
            raise DeployError(f"values file {str(f)!r} does not exist")
    cmd = helm_upgrade_command(cfg, release, namespace, repository_uri, values_files, chart)
    # Release records in ConfigMaps: the pipeline's Role grants ConfigMaps, never list/create on Secrets.
    return run_tool(helm_binary(), cmd[1:], what=f"deploy release {release} to namespace {namespace}", timeout=timeout,
                    env={"HELM_DRIVER": HELM_DRIVER})


__all__ = ["CHART", "RELEASE", "DeployError", "deploy_helm", "helm_upgrade_command", "helm_values", "pvc_uri",
           "repository_values", "set_args"]
