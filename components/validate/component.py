"""KFP component `validate`: the pipeline's first task. Checks every pipeline parameter and the recipe (with its
overrides) before anything runs, and resolves the overrides every later task loads the recipe with."""

from typing import NamedTuple

from kfp import dsl

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(config: str, overrides: list, target: str, data_root: str, checkpoints_root: str, gpus: int,
             data_pvc: str, checkpoints_pvc: str, mlflow_secret: str, milvus_secret: str, s3_secret: str,
             launcher: str, deploy_target: str, serving_source: str, serve_datastore: str, register_alias: str,
             gate_metric: str, gate_min: float) -> NamedTuple("Outputs", [("overrides", list), ("export_root", str),
                                                                          ("digest", str)]):
    """Fail with one line on a bad parameter, Secret/PVC name, datastore name or recipe value; return the
    resolved overrides (data dir on the PVC, cluster names), where the model repository is exported, and the
    digest of the resolved recipe's content and declared sources (part of the cached data tasks' cache keys)."""
    from collections import namedtuple

    from tuna.kfp import tasks

    with tasks.task("validate"):
        resolved, export_root = tasks.validate_inputs(
            config, overrides, target=target, data_root=data_root, checkpoints_root=checkpoints_root, gpus=gpus,
            data_pvc=data_pvc, checkpoints_pvc=checkpoints_pvc, mlflow_secret=mlflow_secret,
            milvus_secret=milvus_secret, s3_secret=s3_secret, launcher=launcher, deploy_target=deploy_target,
            serving_source=serving_source, serve_datastore=serve_datastore, register_alias=register_alias,
            gate_metric=gate_metric, gate_min=gate_min)
        digest = tasks.inputs_digest(config, resolved)
    print(f"validate: ok; overrides {resolved}; inputs digest {digest}")
    return namedtuple("Outputs", ["overrides", "export_root", "digest"])(resolved, export_root, digest)
