"""KFP component `register_model`: register the exported repository in the MLflow registry under an alias."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_model(config: str, overrides: list, mlflow_parent: str, repository: Input[Model], metrics: Input[Metrics],
                   alias: str = "evaluated", gate_metric: str = "", gate_min: float = 0.0) -> str:
    """Register the repository as a new version of `<registered model>-serving` and point `alias` at it, unless
    `gate_metric` of the evaluation is below `gate_min`. Returns `models:/<name>@<alias>` ("" when gated)."""
    from tuna.kfp import tasks

    with tasks.task("register_model"):
        return tasks.run_register(config, overrides, mlflow_parent, repository.metadata, metrics.metadata, alias,
                                     gate_metric, gate_min)
