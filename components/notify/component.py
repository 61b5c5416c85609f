"""KFP component `notify`: the exit handler - record the pipeline's final status, clean up, notify."""

from kfp import dsl

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def notify(config: str, overrides: list, status: dsl.PipelineTaskFinalStatus, data_root: str = "",
           target: str = "local", webhook: str = "") -> str:
    """Runs after every other task, whatever happened: appends the status to run.data_dir/kfp/status.jsonl,
    removes half-written exports, POSTs the status to `webhook` when set. Returns the one-line status."""
    from tuna.kfp import tasks

    final = {"state": status.state, "pipeline_job_resource_name": status.pipeline_job_resource_name,
             "pipeline_task_name": status.pipeline_task_name, "error_code": status.error_code,
             "error_message": status.error_message}
    return tasks.run_notify(config, overrides, final, data_root, target, webhook)
