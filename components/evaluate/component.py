"""KFP component `evaluate`: `tuna eval` - POPE, FINER, MME, CHAIR and the datastore swap; the report."""

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(config: str, overrides: list, mlflow_parent: str, tuna_model: Input[Model], baseline_model: Input[Model],
             metrics: Output[Metrics], report: Output[Markdown]):
    """Evaluate the two trained variants (skipped when up to date); log the headline numbers
    (`<variant>_<metric>`) as metrics and the evaluation report as markdown."""
    from tuna.kfp import tasks

    variants = [tuna_model.metadata.get("variant", "tuna"), baseline_model.metadata.get("variant", "baseline")]
    with tasks.task("evaluate"):
        result, text = tasks.run_evaluate(config, overrides, mlflow_parent, variants)
    tasks.publish_metrics(metrics, result.metrics)
    tasks.publish_markdown(report, text, result.metadata)
    print(f"evaluate: {result.summary}")
