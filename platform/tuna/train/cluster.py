"""Cluster launch: submit a rendered training job (:mod:`tuna.train.jobs`) with the Kubernetes client and follow
its status conditions (and a TrainJob's ``status.trainerStatus`` progress, :mod:`tuna.train.progress`) until it
succeeds, fails or the timeout passes. The only module that imports ``kubernetes``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuna.errors import ConfigError
from tuna.recipe import Recipe
from tuna.track import PARENT_RUN_ENV, TRACKING_URI_ENV, injected_run_id
from tuna.train.jobs import (
    INSTALL_HINTS,
    KINDS,
    KUEUE_QUEUE_LABEL,
    ClusterError,
    FollowTimeout,
    Kind,
    one_line,
    render_pytorchjob,
    render_trainjob,
    to_yaml,
    validate,
)
from tuna.train.progress import progress_line

# ---------------------------------------------------------------------------------- submit and follow


@dataclass
class Connection:
    """A CustomObjectsApi and where it points, for error messages."""

    api: Any
    host: str
    context: str


def connect(context: str | None = None, kubeconfig: str | None = None) -> Connection:
    """The Kubernetes API from a kubeconfig (``kubeconfig`` / $KUBECONFIG / ~/.kube/config, context ``context`` or the
    current one) or, inside a pod without either argument, the in-cluster service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    conf = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not Path(path).is_file():
        try:
            config.load_incluster_config(client_configuration=conf)
        except ConfigException as err:
            raise ClusterError(f"in-cluster Kubernetes config unusable ({one_line(str(err))}); mount the pod's "
                               f"service account token or pass a kubeconfig") from None
        where = "in-cluster"
    else:
        if not Path(path).is_file():
            raise ClusterError(f"no kubeconfig at {path} and not running in a pod; set KUBECONFIG (or pass a "
                               f"kubeconfig) to reach the cluster, e.g. after `gcloud/aws/az ... get-credentials`")
        try:
            config.load_kube_config(config_file=path, context=context, client_configuration=conf, persist_config=False)
            where = context or config.list_kube_config_contexts(path)[1]["name"]
        except (ConfigException, KeyError, TypeError, ValueError, OSError) as err:
            raise ClusterError(f"kubeconfig {path} (context {context or 'current'}): {one_line(str(err))}; "
                               f"list contexts with `kubectl config get-contexts`") from None
    conf.retries = 1  # an unreachable server fails in seconds, not minutes
    return Connection(client.CustomObjectsApi(client.ApiClient(conf)), conf.host, where)


def submit(obj: dict[str, Any], namespace: str | None = None, *, context: str | None = None,
           kubeconfig: str | None = None, conn: Connection | None = None) -> str:
    """Validate ``obj`` offline, create it on the cluster and return its name."""
    validate(obj)
    spec = KINDS[obj["kind"]]
    body = copy.deepcopy(obj)
    ns = namespace or body["metadata"].get("namespace") or "default"
    if spec.namespaced:
        body["metadata"]["namespace"] = ns
    conn = conn or connect(context, kubeconfig)
    what = f"{spec.kind} {body['metadata']['name']}" + (f" in namespace {ns}" if spec.namespaced else "")
    with _api_errors(conn, spec, what, ns):
        if spec.namespaced:
            created = conn.api.create_namespaced_custom_object(spec.group, spec.version, ns, spec.plural, body,
                                                               _request_timeout=(10, 60))
        else:
            created = conn.api.create_cluster_custom_object(spec.group, spec.version, spec.plural, body,
                                                            _request_timeout=(10, 60))
    return str(created["metadata"]["name"])


def follow(name: str, namespace: str, kind: str = "TrainJob", poll_seconds: float = 15.0, timeout: float = 86400.0, *,
           conn: Connection | None = None, context: str | None = None, kubeconfig: str | None = None,
           echo: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> str:
    """Poll the job's status conditions, print each change of state and of a TrainJob's reported progress
    (``status.trainerStatus``), return ``"Succeeded"`` or ``"Failed"``.

    Raises FollowTimeout after ``timeout`` seconds (the job keeps running) and ClusterError when the job
    disappears or the API server stays unreachable for three polls in a row.
    """
    if kind not in ("TrainJob", "PyTorchJob"):
        raise ClusterError(f"follow: kind must be TrainJob or PyTorchJob, got {kind!r}")
    spec, echo = KINDS[kind], echo or _say
    conn = conn or connect(context, kubeconfig)
    deadline, last, last_progress, misses = clock() + timeout, None, None, 0
    while True:
        try:
            with _api_errors(conn, spec, f"{kind} {namespace}/{name}", namespace):
                obj = conn.api.get_namespaced_custom_object(spec.group, spec.version, namespace, spec.plural, name,
                                                            _request_timeout=(10, 60))
            misses = 0
        except ClusterError:
            misses += 1
            if misses >= 3 or clock() >= deadline:
                raise
            sleep(poll_seconds)
            continue
        state, detail = job_state(kind, obj)
        queue = ((obj.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
        if state == "Suspended" and queue and not detail:
            detail = f"waiting for Kueue to admit it from LocalQueue {queue}"
        if state != last:
            echo(f"{kind} {namespace}/{name}: {state}" + (f" ({detail})" if detail else ""))
            last = state
        progress = progress_line(obj) if state not in ("Succeeded", "Failed") else None
        if progress and progress != last_progress:
            echo(f"{kind} {namespace}/{name}: {progress}")
            last_progress = progress
        if state in ("Succeeded", "Failed"):
            return state
        if clock() >= deadline:
            raise FollowTimeout(f"{kind} {namespace}/{name} is still {state} after {timeout:g} s and keeps running; "
                                f"watch it with `kubectl get {spec.plural}.{spec.group} {name} -n {namespace} -w` "
                                f"or stop it with `kubectl delete {spec.plural}.{spec.group} {name} -n {namespace}`")
        sleep(poll_seconds)


def launch(cfg: Recipe, stage: int, variant: str = "tuna", overrides: Sequence[str] = (), *,
           launcher: str = "trainjob", recipe: str | Path | None = None, resume: bool = False, dry_run: bool = False,
           wait: bool = True, conn: Connection | None = None, echo: Callable[[str], None] | None = None) -> str:
    """Render, validate and (unless ``dry_run``: print the YAML instead) submit one stage, then follow it. The
    pipeline's MLflow parent run (``TUNA_MLFLOW_PARENT_RUN_ID``, exported by the KFP task, else KFP's plugin's
    ``MLFLOW_RUN_ID``) goes into the job's env, and the task's ``MLFLOW_TRACKING_URI`` server when the recipe names
    none.

    Returns ``"DryRun"``, ``"Submitted"`` (``wait=False``), ``"Succeeded"`` or ``"Failed"``.
    """
    renderers = {"trainjob": render_trainjob, "pytorchjob": render_pytorchjob}
    if launcher not in renderers:
        raise ConfigError(f"launcher: must be trainjob or pytorchjob, got {launcher!r}")
    if launcher == "pytorchjob":
        print(PYTORCHJOB_DEPRECATED, file=sys.stderr, flush=True)  # stderr: a --dry-run's YAML on stdout stays clean
    if stage == 1:   # a bad LLaVA/CLIP pair: one line before any pod starts (when the paths are readable here)
        from tuna.train.launch import check_checkpoints

        check_checkpoints(cfg, where="cluster")
    echo, c = echo or _say, cfg.cluster
    server = os.environ.get(TRACKING_URI_ENV, "")
    if not (c.mlflow_tracking_uri or cfg.track.tracking_uri) and server.startswith(("http://", "https://")):
        # a server only this task was told about (KFP's MLflow plugin injects it): the job's pods need it too
        cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(c, mlflow_tracking_uri=server))
    obj = renderers[launcher](cfg, stage, variant, overrides, recipe=recipe, resume=resume,
                              parent_run_id=os.environ.get(PARENT_RUN_ENV) or injected_run_id())
    validate(obj)
    if dry_run:
        echo(to_yaml(obj).rstrip("\n"))
        return "DryRun"
    conn = conn or connect(c.kube_context)
    name = submit(obj, c.namespace, conn=conn)
    echo(f"submitted {obj['kind']} {c.namespace}/{name} to {conn.host} (context {conn.context})")
    if not wait:
        return "Submitted"
    return follow(name, c.namespace, obj["kind"], c.poll_seconds, c.follow_timeout, conn=conn, echo=echo)


PYTORCHJOB_DEPRECATED = ("tuna train: warning: the pytorchjob launcher is deprecated: Kubeflow Training Operator v1 "
                         "(PyTorchJob) is being shut down upstream; use --launcher trainjob / cluster.launcher: trainjob "
                         "(Kubeflow Trainer v2.3 TrainJob)")


def _say(line: str) -> None:
    print(line, flush=True)


def job_state(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(state, detail) of a TrainJob (conditions Complete/Failed/Suspended, jobsStatus) or a PyTorchJob
    (conditions Created/Running/Restarting/Succeeded/Failed/Suspended)."""
    status = obj.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}

    def detail(c: dict[str, Any]) -> str:
        return one_line(": ".join(x for x in (c.get("reason"), c.get("message")) if x))

    for cond, state in (("Failed", "Failed"), ("Complete", "Succeeded"), ("Succeeded", "Succeeded"),
                        ("Suspended", "Suspended"), ("Restarting", "Restarting"), ("Running", "Running")):
        if cond in true:
            return state, detail(true[cond])
    if kind == "TrainJob":
        jobs = status.get("jobsStatus") or []
        if any((j.get("active") or 0) + (j.get("ready") or 0) > 0 for j in jobs):
            return "Running", ", ".join(f"{j.get('name')}: {j.get('active') or 0} active" for j in jobs)
    if "Created" in true:
        return "Created", detail(true["Created"])
    return "Pending", ""


@contextlib.contextmanager
def _api_errors(conn: Connection, spec: Kind, what: str, namespace: str) -> Iterator[None]:
    """Turn client exceptions into one-line ClusterErrors naming the server, the context and the fix."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as err:
        raise ClusterError(f"{what}: {_refusal(err, conn, spec, namespace)}") from None
    except (HTTPError, OSError) as err:
        reason = re.search(r"\[Errno -?\d+\] [^'\")]+|timed out|certificate verify failed[^'\")]*", str(err))
        raise ClusterError(f"cannot reach the Kubernetes API server {conn.host} (kube context {conn.context}): "
                           f"{reason[0] if reason else type(err).__name__}; check `kubectl cluster-info` for that "
                           f"context, or pick another with cluster.kube_context / KUBECONFIG") from None


def _refusal(err: Any, conn: Connection, spec: Kind, namespace: str) -> str:
    try:
        message = json.loads(err.body or "{}").get("message") or err.reason
    except (ValueError, AttributeError):
        message = err.reason
    message, s = one_line(str(message)), err.status
    if s == 404 and "namespaces" in message and "not found" in message:
        return f"namespace {namespace} does not exist on {conn.host}; create it or set cluster.namespace"
    if s == 404:
        return (f"{message}; the cluster at {conn.host} may lack the {spec.plural}.{spec.group} CRD: "
                f"{INSTALL_HINTS[spec.kind]}")
    if s in (401, 403):
        return (f"refused ({s}): {message}; the credentials of context {conn.context} need create/get on "
                f"{spec.plural}.{spec.group} in namespace {namespace} (RBAC in manifests/)")
    if s == 409:
        return f"already exists ({message}); choose another name or delete the old one"
    return f"refused by the API server ({s}): {message}"
