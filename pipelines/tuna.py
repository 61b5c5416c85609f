"""The TUNA pipeline: every step of `tuna run` as a KFP task, with the Kubernetes settings of a cluster run.

DAG (inside an ExitHandler whose exit task, ``notify``, always runs)::

    validate -> world -> encoder -> build_index per declared datastore -> start_run (MLflow parent run)
                      -> mine_tags ---^    (the world's: A, B, A_captions)  lm --^
    start_run -> train stage 1 -> train stage 2   (variant baseline, and variant tuna: its stage 2 waits for the
                                                  baseline's, which it starts from with train.stage2.init_from)
              -> evaluate (both stage-2 models) -> export_model_repository (tuna) -> register_model -> deploy

``build_pipeline(options)`` returns the ``@dsl.pipeline``; :class:`tuna.kfp.options.PipelineOptions` holds what KFP
bakes into the IR at compile time, all from the recipe's ``cluster:`` section: the pods' image, the mount paths, the
training launcher and - with the local launcher only - the training tasks' GPUs, node selector and tolerations (with
``trainjob`` / ``pytorchjob`` the training tasks only submit and follow the job and request no GPU). Everything else
a run may change is a pipeline parameter, checked by the first task, ``validate``.
Kubernetes settings (kfp-kubernetes; ignored by ``kfp.local``): the data PVC on every pod but ``validate``, the
checkpoints PVC on training, export and register, the MLflow / Milvus / S3 Secrets as env vars on every task
that talks to them, the ``app.kubernetes.io/part-of: tuna`` pod label (NetworkPolicies select it). Caching is on
for the data steps (their inputs are the recipe and upstream artifacts) and off for the rest (they nest MLflow
runs under a per-run parent, and deploy / register must act every time).

Compile with ``tuna pipeline compile --config <recipe>``; run locally with ``tuna pipeline run --local``
(``target=local``).
"""

from kfp import dsl, kubernetes

from tuna.kfp.options import (
    ACCELERATOR,
    DEFAULT_RECIPE,
    IMAGE_UID,
    PIPELINE_NAME,
    SECRET_ENV,
    SECRET_OPTIONAL_ENV,
    TRAINING_ORDER,
    PipelineOptions,
)
from tuna_components.build_index.component import build_index
from tuna_components.deploy.component import deploy
from tuna_components.encoder.component import encoder
from tuna_components.evaluate.component import evaluate
from tuna_components.export_model_repository.component import export_model_repository
from tuna_components.lm.component import lm
from tuna_components.mine_tags.component import mine_tags
from tuna_components.notify.component import notify
from tuna_components.register_model.component import register_model
from tuna_components.start_run.component import start_run
from tuna_components.train.component import train
from tuna_components.validate.component import validate
from tuna_components.world.component import world

# step -> component (components/<step>/component.py), in DAG order
COMPONENTS = {"validate": validate, "world": world, "encoder": encoder, "mine_tags": mine_tags,
              "build_index": build_index, "lm": lm, "start_run": start_run, "train": train, "evaluate": evaluate,
              "export_model_repository": export_model_repository, "register_model": register_model, "deploy": deploy,
              "notify": notify}
STEPS = tuple(COMPONENTS)
POD_LABELS = (("app.kubernetes.io/part-of", "tuna"), ("app.kubernetes.io/component", "pipeline"))  # manifests/ NetworkPolicies


def build_pipeline(options: PipelineOptions = None):
    """The ``@dsl.pipeline`` for ``options`` (default: ``ClusterConfig()``'s CPU build with the local launcher)."""
    o = options or PipelineOptions()
    cluster = o.cluster
    c = COMPONENTS

    def pod(task, name: str, cache: bool = False, data: bool = True, checkpoints: bool = False, secrets: bool = True):
        """Display name, caching, image and the Kubernetes settings of one task."""
        task.set_display_name(name)
        task.set_caching_options(cache)
        task.set_container_image(cluster.image)
        # the image's own user, non-root: what the namespace's Pod Security (audit/warn restricted) expects
        kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)
        for key, value in POD_LABELS:
            kubernetes.add_pod_label(task, key, value)
        if data:
            kubernetes.mount_pvc(task, pvc_name=params["data_pvc"], mount_path=cluster.data_mount)
        if checkpoints:
            kubernetes.mount_pvc(task, pvc_name=params["checkpoints_pvc"], mount_path=cluster.checkpoints_mount)
        if secrets:
            for param, keys in SECRET_ENV.items():
                kubernetes.use_secret_as_env(task, secret_name=params[param], secret_key_to_env={k: k for k in keys})
            for param, keys in SECRET_OPTIONAL_ENV.items():
                kubernetes.use_secret_as_env(task, secret_name=params[param], secret_key_to_env={k: k for k in keys},
                                             optional=True)
        return task

    def trainer(task):
        """Local launcher: training runs in this task's pod, on the recipe's GPUs, node pool and tolerations.
        TrainJob / PyTorchJob: the task only submits the job and follows it; the job's pods get all of that."""
        if not o.trains_in_task:
            return task
        # the ranks' CPU and memory (requests = limits: a training pod is not evicted for another's burst) and
        # /dev/shm as a memory-backed emptyDir (the container runtime's 64 MiB default breaks NCCL and gloo)
        task.set_cpu_request(cluster.cpu).set_cpu_limit(cluster.cpu)
        task.set_memory_request(cluster.memory).set_memory_limit(cluster.memory)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=cluster.shm_size)
        if o.train_gpus:
            task.set_accelerator_type(ACCELERATOR).set_accelerator_limit(o.train_gpus)
        for key, value in sorted(cluster.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for t in cluster.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
        return task

    params = {}

    @dsl.pipeline(name=PIPELINE_NAME,
                  description=f"TUNA {o.version}: world -> encoder -> tags -> datastores {'/'.join(o.datastores)} -> LM -> "
                              f"stage 1 -> stage 2 (tuna, baseline) -> evaluate -> export -> register -> deploy"
                              f"{_training(o)}")
    def tuna(config: str = DEFAULT_RECIPE, overrides: list = [], target: str = "kubernetes",  # noqa: B006
             deploy_target: str = "helm", serving_source: str = "pvc", serve_datastore: str = "",
             register_alias: str = "evaluated", gate_metric: str = "", gate_min: float = 0.0,
             data_pvc: str = "tuna-data", checkpoints_pvc: str = "tuna-checkpoints", mlflow_secret: str = "",
             milvus_secret: str = "", s3_secret: str = "", helm_release: str = "tuna-serving",
             helm_namespace: str = "tuna", helm_chart: str = "helm/tuna-serving", helm_values: list = [],  # noqa: B006
             notify_url: str = ""):
        params.update(data_pvc=data_pvc, checkpoints_pvc=checkpoints_pvc, mlflow_secret=mlflow_secret,
                      milvus_secret=milvus_secret, s3_secret=s3_secret)
        exit_task = pod(c["notify"](config=config, overrides=overrides, data_root=cluster.data_mount, target=target,
                                    webhook=notify_url), "notify", secrets=False)
        with dsl.ExitHandler(exit_task, name="tuna-run"):
            check = c["validate"](
                config=config, overrides=overrides, target=target, data_root=cluster.data_mount,
                checkpoints_root=cluster.checkpoints_mount, gpus=o.train_gpus, data_pvc=data_pvc,
                checkpoints_pvc=checkpoints_pvc, mlflow_secret=mlflow_secret, milvus_secret=milvus_secret,
                s3_secret=s3_secret, launcher=o.launcher, deploy_target=deploy_target,
                serving_source=serving_source, serve_datastore=serve_datastore, register_alias=register_alias,
                gate_metric=gate_metric, gate_min=gate_min)
            pod(check, "validate", secrets=False)  # the recipe in the image; the declared data and checkpoints on the PVC
            ov, digest = check.outputs["overrides"], check.outputs["digest"]

            # data steps: cached; their cache key holds the resolved recipe's content and declared sources (digest:
            # the recipe's path alone would keep serving outputs of an edited recipe) and the upstream artifacts
            world = pod(c["world"](config=config, overrides=ov, digest=digest), "world", cache=True)
            encoder = pod(c["encoder"](config=config, overrides=ov, digest=digest, world=world.outputs["dataset"]),
                          "encoder", cache=True)
            tags = pod(c["mine_tags"](config=config, overrides=ov, digest=digest, world=world.outputs["dataset"],
                                      domain="all"), "mine-tags", cache=True)
            index = {name: pod(c["build_index"](config=config, overrides=ov, digest=digest,
                                                encoder=encoder.outputs["model"], tags=tags.outputs["tags"],
                                                datastore=name),
                               f"index-{name.replace('_', '-')}", cache=True) for name in o.datastores}
            others = [t for name, t in index.items() if name != o.model_datastore]
            lm = pod(c["lm"](config=config, overrides=ov, digest=digest, world=world.outputs["dataset"]), "lm",
                     cache=True)
            tracking = pod(c["start_run"](
                config=config, overrides=ov, world=world.outputs["dataset"], encoder=encoder.outputs["model"],
                tags=tags.outputs["tags"], datastore=index[o.model_datastore].outputs["index"],
                lm=lm.outputs["model"]), "start-run")
            tracking.after(*others)  # the parent run records every datastore (their manifests)
            parent = tracking.output

            final, last = {}, {}
            for variant in TRAINING_ORDER:
                base = lm.outputs["model"]
                for stage in (1, 2):
                    step = c["train"](config=config, overrides=ov, mlflow_parent=parent, stage=stage, variant=variant,
                                      launcher=o.launcher, base=base, datastore=index[o.model_datastore].outputs["index"])
                    trainer(pod(step, f"train-{variant}-stage{stage}", checkpoints=True))
                    if stage == 2 and variant != TRAINING_ORDER[0]:
                        # the recipe is a run parameter: with train.stage2.init_from its stage 2 starts from the
                        # baseline's finished model, so it always waits for it
                        step.after(last[TRAINING_ORDER[0]])
                    last[variant], base = step, step.outputs["model"]
                final[variant] = base

            evaluation = pod(c["evaluate"](config=config, overrides=ov, mlflow_parent=parent,
                                           tuna_model=final["tuna"], baseline_model=final["baseline"]), "evaluate")
            evaluation.after(*others)  # the datastore swap and the captions ablation read them
            export = pod(c["export_model_repository"](config=config, overrides=ov, mlflow_parent=parent,
                                                      model=final["tuna"], out_root=check.outputs["export_root"],
                                                      trtllm=cluster.gpus_per_node > 0), "export", checkpoints=True)
            export.after(evaluation)  # only an evaluated model is exported
            register = pod(c["register_model"](config=config, overrides=ov, mlflow_parent=parent,
                                               repository=export.outputs["repository"],
                                               metrics=evaluation.outputs["metrics"], alias=register_alias,
                                               gate_metric=gate_metric, gate_min=gate_min), "register", checkpoints=True)
            pod(c["deploy"](config=config, overrides=ov, mlflow_parent=parent, repository=export.outputs["repository"],
                            target=deploy_target, registered=register.output, serving_source=serving_source,
                            chart=helm_chart, release=helm_release, namespace=helm_namespace, values_files=helm_values,
                            repository_pvc=checkpoints_pvc, repository_mount=cluster.checkpoints_mount), "deploy")

    return tuna


def _training(o: PipelineOptions) -> str:
    """How training runs, for the pipeline's description ("" for the default CPU build)."""
    if not o.trains_in_task:
        return f" (training submitted as a {'TrainJob' if o.launcher == 'trainjob' else 'PyTorchJob'})"
    return f" (GPU training: {o.train_gpus} x {ACCELERATOR} per training task)" if o.train_gpus else ""
