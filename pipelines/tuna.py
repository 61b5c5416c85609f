"""The TUNA pipeline: every step of `tuna run` as a KFP task, with the Kubernetes settings of a cluster run.

DAG (inside an ExitHandler whose exit task, ``notify``, always runs)::

    validate -> world -> encoder -> build_index A / B / A_captions -> start_run (MLflow parent run)
                      -> mine_tags ---^            lm ----------------^
    start_run -> train stage 1 -> train stage 2   (variant tuna, and variant baseline: two chains)
              -> evaluate (both stage-2 models) -> export_model_repository (tuna) -> register_model -> deploy

``build_pipeline(options)`` returns the ``@dsl.pipeline``; :class:`tuna.pipeline.PipelineOptions` holds what KFP
bakes into the IR at compile time (GPU accelerators, node selector and tolerations of the training tasks, mount
paths). Everything a run may change is a pipeline parameter, checked by the first task, ``validate``.
Kubernetes settings (kfp-kubernetes; ignored by ``kfp.local``): the data PVC on every pod but ``validate``, the
checkpoints PVC on training, export and register, the MLflow / Milvus / S3 Secrets as env vars on every task
that talks to them, the ``app.kubernetes.io/part-of: tuna`` pod label (NetworkPolicies select it). Caching is on
for the data steps (their inputs are the recipe and upstream artifacts) and off for the rest (they nest MLflow
runs under a per-run parent, and deploy / register must act every time).

Compile with ``tuna pipeline compile``; run locally with ``tuna pipeline run --local`` (``target=local``).
"""

import importlib.util
import sys
from pathlib import Path

from kfp import dsl, kubernetes

from tuna.pipeline import (
    DEFAULT_RECIPE,
    PIPELINE_NAME,
    SECRET_ENV,
    SECRET_OPTIONAL_ENV,
    VARIANTS,
    PipelineOptions,
)

COMPONENTS_DIR = Path(__file__).resolve().parent.parent / "components"
STEPS = ("validate", "world", "encoder", "mine_tags", "build_index", "lm", "start_run", "train", "evaluate",
         "export_model_repository", "register_model", "deploy", "notify")
DATASTORES = ("A", "B", "A_captions")  # = tuna.retrieval.datastore.DATASTORES (checked by the tests)
POD_LABELS = (("app.kubernetes.io/part-of", "tuna"), ("app.kubernetes.io/component", "pipeline"))  # manifests/ NetworkPolicies


def load_component(step: str):
    """The component defined in ``components/<step>/component.py`` (loaded by path: no packages there)."""
    name = f"tuna_components_{step}"
    path = COMPONENTS_DIR / step / "component.py"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return getattr(sys.modules[name], step)


def components() -> dict:
    return {step: load_component(step) for step in STEPS}


def build_pipeline(options: PipelineOptions = None):
    """The ``@dsl.pipeline`` for ``options`` (default: CPU training, mounts at /mnt/tuna and /mnt/tuna-checkpoints)."""
    o = options or PipelineOptions()
    c = components()

    def pod(task, name: str, cache: bool = False, data: bool = True, checkpoints: bool = False, secrets: bool = True):
        """Display name, caching and the Kubernetes settings of one task."""
        task.set_display_name(name)
        task.set_caching_options(cache)
        for key, value in POD_LABELS:
            kubernetes.add_pod_label(task, key, value)
        if data:
            kubernetes.mount_pvc(task, pvc_name=params["data_pvc"], mount_path=o.data_mount)
        if checkpoints:
            kubernetes.mount_pvc(task, pvc_name=params["checkpoints_pvc"], mount_path=o.checkpoints_mount)
        if secrets:
            for param, keys in SECRET_ENV.items():
                kubernetes.use_secret_as_env(task, secret_name=params[param], secret_key_to_env={k: k for k in keys})
            for param, keys in SECRET_OPTIONAL_ENV.items():
                kubernetes.use_secret_as_env(task, secret_name=params[param], secret_key_to_env={k: k for k in keys},
                                             optional=True)
        return task

    def gpu(task):
        if o.gpu:
            task.set_accelerator_type(o.accelerator).set_accelerator_limit(o.gpus_per_node)
            for key, value in o.gpu_node_selector:
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for key, operator, effect in o.gpu_tolerations:
                kubernetes.add_toleration(task, key=key, operator=operator, effect=effect)
        return task

    params = {}

    @dsl.pipeline(name=PIPELINE_NAME,
                  description=f"TUNA {o.version}: world -> encoder -> tags -> datastores A/B/A_captions -> LM -> "
                              f"stage 1 -> stage 2 (tuna, baseline) -> evaluate -> export -> register -> deploy"
                              f"{' (GPU training)' if o.gpu else ''}")
    def tuna(config: str = DEFAULT_RECIPE, overrides: list = [], target: str = "kubernetes", launcher: str = "local",  # noqa: B006
             train_nodes: int = 1, deploy_target: str = "helm", serving_source: str = "pvc", serve_datastore: str = "",
             register_alias: str = "evaluated", gate_metric: str = "", gate_min: float = 0.0,
             data_pvc: str = "tuna-data", checkpoints_pvc: str = "tuna-checkpoints", mlflow_secret: str = "",
             milvus_secret: str = "", s3_secret: str = "", helm_release: str = "tuna-serving",
             helm_namespace: str = "tuna", helm_chart: str = "helm/tuna-serving", helm_values: list = [],  # noqa: B006
             notify_url: str = ""):
        params.update(data_pvc=data_pvc, checkpoints_pvc=checkpoints_pvc, mlflow_secret=mlflow_secret,
                      milvus_secret=milvus_secret, s3_secret=s3_secret)
        exit_task = pod(c["notify"](config=config, overrides=overrides, data_root=o.data_mount, target=target,
                                    webhook=notify_url), "notify", secrets=False)
        with dsl.ExitHandler(exit_task, name="tuna-run"):
            check = c["validate"](
                config=config, overrides=overrides, target=target, data_root=o.data_mount,
                checkpoints_root=o.checkpoints_mount, gpus=o.gpus_per_node if o.gpu else 0, data_pvc=data_pvc,
                checkpoints_pvc=checkpoints_pvc, mlflow_secret=mlflow_secret, milvus_secret=milvus_secret,
                s3_secret=s3_secret, launcher=launcher, train_nodes=train_nodes, deploy_target=deploy_target,
                serving_source=serving_source, serve_datastore=serve_datastore, register_alias=register_alias,
                gate_metric=gate_metric, gate_min=gate_min)
            pod(check, "validate", data=False, secrets=False)  # reads only the recipe in the image
            ov = check.outputs["overrides"]

            # data steps: cached (their inputs are the resolved recipe and the upstream artifacts)
            world = pod(c["world"](config=config, overrides=ov), "world", cache=True)
            encoder = pod(c["encoder"](config=config, overrides=ov, world=world.outputs["dataset"]), "encoder",
                          cache=True)
            tags = pod(c["mine_tags"](config=config, overrides=ov, world=world.outputs["dataset"], domain="all"),
                       "mine-tags", cache=True)
            index = {name: pod(c["build_index"](config=config, overrides=ov, encoder=encoder.outputs["model"],
                                                tags=tags.outputs["tags"], datastore=name),
                               f"index-{name.replace('_', '-')}", cache=True) for name in DATASTORES}
            lm = pod(c["lm"](config=config, overrides=ov, world=world.outputs["dataset"]), "lm", cache=True)
            tracking = pod(c["start_run"](
                config=config, overrides=ov, world=world.outputs["dataset"], encoder=encoder.outputs["model"],
                tags=tags.outputs["tags"], datastore_a=index["A"].outputs["index"],
                datastore_b=index["B"].outputs["index"], datastore_a_captions=index["A_captions"].outputs["index"],
                lm=lm.outputs["model"]), "start-run")
            parent = tracking.output

            final = {}
            for variant in VARIANTS:
                base = lm.outputs["model"]
                for stage in (1, 2):
                    step = c["train"](config=config, overrides=ov, mlflow_parent=parent, stage=stage, variant=variant,
                                      launcher=launcher, base=base, datastore=index["A"].outputs["index"])
                    gpu(pod(step, f"train-{variant}-stage{stage}", checkpoints=True))
                    base = step.outputs["model"]
                final[variant] = base

            evaluation = pod(c["evaluate"](config=config, overrides=ov, mlflow_parent=parent,
                                           tuna_model=final["tuna"], baseline_model=final["baseline"]), "evaluate")
            evaluation.after(index["B"], index["A_captions"])  # the datastore swap and the captions ablation read them
            export = pod(c["export_model_repository"](config=config, overrides=ov, mlflow_parent=parent,
                                                      model=final["tuna"], out_root=check.outputs["export_root"],
                                                      trtllm=o.gpu), "export", checkpoints=True)
            export.after(evaluation)  # only an evaluated model is exported
            register = pod(c["register_model"](config=config, overrides=ov, mlflow_parent=parent,
                                               repository=export.outputs["repository"],
                                               metrics=evaluation.outputs["metrics"], alias=register_alias,
                                               gate_metric=gate_metric, gate_min=gate_min), "register", checkpoints=True)
            pod(c["deploy"](config=config, overrides=ov, mlflow_parent=parent, repository=export.outputs["repository"],
                            target=deploy_target, registered=register.output, serving_source=serving_source,
                            chart=helm_chart, release=helm_release, namespace=helm_namespace, values_files=helm_values,
                            repository_pvc=checkpoints_pvc, repository_mount=o.checkpoints_mount), "deploy")

    return tuna
