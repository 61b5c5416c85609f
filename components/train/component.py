"""KFP component `train`: `tuna train --stage N --variant V` - one DeepSpeed training stage of one variant."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(config: str, overrides: list, mlflow_parent: str, stage: int, variant: str, launcher: str,
          base: Input[Model], datastore: Input[Dataset], model: Output[Model]):
    """Train `stage` (1 or 2) of `variant` from `base` (the LM for stage 1, the stage-1 model for stage 2):
    `launcher` local runs DeepSpeed ranks in this pod, trainjob / pytorchjob creates the job on the cluster and
    follows it. Skipped when up to date. Metadata: losses, steps, seconds, ranks, ZeRO stage, registered version."""
    from tuna.kfp import tasks

    with tasks.task(f"train {variant} stage {stage}"):
        result = tasks.run_train(config, overrides, mlflow_parent, stage, variant, launcher)
    tasks.publish(model, result)
    print(f"train: {result.summary} (from {base.metadata.get('uri')}, datastore {datastore.metadata.get('name')})")
