"""Submit the pipeline to a KFP host (``tuna pipeline submit --host URL``): compile it with the recipe's ``cluster:``
section, upload the IR as a pipeline version with ``kfp.Client`` and create a run in an experiment."""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuna.errors import TunaError
from tuna.kfp.compile import compile_pipeline
from tuna.kfp.options import PIPELINE_NAME, PipelineError, PipelineOptions, _first_line
from tuna.recipe import ClusterConfig, Recipe

TOKEN_ENV = "KFP_TOKEN"  # a bearer token for a multi-user Kubeflow (e.g. `kubectl create token` of a profile's SA)

# former pipeline parameters: the recipe's cluster section is their one source now
FROM_RECIPE = {"launcher": "cluster.launcher", "gpus": "cluster.gpus_per_node", "train_nodes": "cluster.num_nodes"}


def _probe_kfp(host: str, timeout: float = 5.0) -> None:
    """One-line PipelineError when nothing answers at ``host`` (any HTTP status counts as an answer)."""
    if not host.startswith(("http://", "https://")):
        raise PipelineError(f"--host {host!r}: give the KFP API URL with its scheme, e.g. http://localhost:8888")
    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PipelineError(f"KFP host {host} is unreachable ({reason}); check the URL, or port-forward the API: "
                            f"kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8888:80") from None


def submit(host: str, experiment: str, version: str, params: Mapping[str, Any], cluster: ClusterConfig | None = None,
           run_name: str | None = None, enable_caching: bool | None = None, out_dir: str | Path | None = None,
           client_factory: Callable[[str], Any] | None = None, recipe: Recipe | None = None) -> dict[str, str]:
    """Compile the pipeline with the recipe's ``cluster`` section, upload it as version ``<version><suffix>`` of
    pipeline ``tuna`` on ``host`` and start a run in ``experiment`` with ``params``; returns the ids and the run's
    URL. An existing version of that name is reused (the suffix tells cluster builds apart). The run's pods use
    ``cluster.pipeline_service_account`` (the manifests' RBAC grants ``tuna-pipeline``); with
    ``cluster.kfp_namespace`` the experiment and run go to that Kubeflow profile namespace, authenticated with
    ``$KFP_TOKEN`` when set."""
    if not experiment.strip():
        raise PipelineError("experiment: give a KFP experiment name (e.g. tuna)")
    _probe_kfp(host)
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="tuna-pipeline-"))
    path = compile_pipeline(folder, version, cluster, recipe)
    c = cluster or ClusterConfig()
    if client_factory is None:
        import kfp

        def client_factory(h: str) -> Any:
            # multi-user Kubeflow: the profile namespace, and a bearer token from $KFP_TOKEN when set (in a pod the SDK
            # reads the projected ServiceAccount token from $KF_PIPELINES_SA_TOKEN_PATH itself)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return kfp.Client(host=h, namespace=c.kfp_namespace or "kubeflow",
                                  existing_token=os.environ.get(TOKEN_ENV) or None)
    options = (PipelineOptions.of(recipe, version, cluster) if recipe is not None
               else PipelineOptions(cluster=cluster or ClusterConfig(), version=version))
    version_name = f"{version}{options.suffix}"
    try:
        client = client_factory(host)
        pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(str(path), pipeline_name=PIPELINE_NAME,
                                                 description="TUNA: world -> datastores -> training -> eval -> serving").pipeline_id
        version_id = None
        listing = client.list_pipeline_versions(pipeline_id, page_size=1, filter=json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]}))
        for v in getattr(listing, "pipeline_versions", None) or []:
            version_id = v.pipeline_version_id
        if version_id is None:
            version_id = client.upload_pipeline_version(str(path), pipeline_version_name=version_name,
                                                        pipeline_id=pipeline_id).pipeline_version_id
        exp = client.create_experiment(experiment, namespace=c.kfp_namespace)
        name = run_name or f"{PIPELINE_NAME}-{version_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=dict(params),
                                  pipeline_id=pipeline_id, version_id=version_id, enable_caching=enable_caching,
                                  service_account=c.pipeline_service_account)
    except TunaError:
        raise
    except Exception as err:  # noqa: BLE001 - ApiException, urllib3 errors...: one line naming the host
        raise PipelineError(f"KFP host {host}: {type(err).__name__}: {_first_line(err)}") from None
    return {"pipeline_id": pipeline_id, "version_id": version_id, "version": version_name, "experiment_id": exp.experiment_id,
            "run_id": run.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}", "package": str(path)}


def submit_params(config: str, overrides: Sequence[str], params: Sequence[str] = ()) -> dict[str, Any]:
    """Pipeline arguments from the CLI: the recipe path (as seen in the image), the overrides, ``name=value`` pairs."""
    import yaml

    out: dict[str, Any] = {"config": config, "overrides": list(overrides)}
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"--param {item!r}: expected name=value, e.g. mlflow_secret=tuna-mlflow")
        if key.strip() in FROM_RECIPE:
            recipe_key = FROM_RECIPE[key.strip()]
            raise PipelineError(f"--param {item!r}: {key.strip()} is not a pipeline parameter; the recipe's "
                                f"{recipe_key} sets it: change the recipe or add the override {recipe_key}=...")
        value = yaml.safe_load(raw) if raw.strip() else ""
        out[key.strip()] = value
    return out


__all__ = ["TOKEN_ENV", "submit", "submit_params"]
