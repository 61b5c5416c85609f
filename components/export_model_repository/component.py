"""KFP component `export_model_repository`: `tuna export` - the Triton model repository of a trained variant."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def export_model_repository(config: str, overrides: list, mlflow_parent: str, model: Input[Model],
                            repository: Output[Model], out_root: str = "", trtllm: bool = False):
    """Export the stage-2 model of `model`'s variant (under `out_root`, the checkpoints PVC, when set; else
    run.data_dir/serve); `trtllm` adds trtllm/model_repository (LLM step on TensorRT-LLM's PyTorch LLM API). Metadata: model digest,
    datastore versions, files, uri."""
    from tuna.kfp import tasks

    with tasks.task("export_model_repository"):
        result = tasks.run_export(config, overrides, mlflow_parent, model.metadata.get("variant", "tuna"),
                                  out_root, trtllm)
    tasks.publish(repository, result)
    print(f"export_model_repository: {result.summary}")
