"""KFP component `deploy`: serve the exported repository (local tritonserver demo, or `helm upgrade --install`)."""

from kfp import dsl
from kfp.dsl import Input, Model

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy(config: str, overrides: list, mlflow_parent: str, repository: Input[Model], target: str = "local",
           registered: str = "", serving_source: str = "pvc", chart: str = "helm/tuna-serving",
           release: str = "tuna-serving", namespace: str = "tuna", values_files: list = [],  # noqa: B006 (KFP default)
           repository_pvc: str = "", repository_mount: str = "") -> str:
    """`local`: start tritonserver on the repository, ask one question over gRPC, stop. `helm`: install or upgrade
    the tuna-serving release with the repository from its PVC (`serving_source=pvc`) or the registered version
    (`mlflow`). `none`: nothing. Returns a one-line summary."""
    from tuna.kfp import tasks

    with tasks.task("deploy"):
        line = tasks.run_deploy(config, overrides, mlflow_parent, repository.metadata, target, registered,
                                serving_source, chart, release, namespace, values_files, repository_pvc,
                                repository_mount)
    print(f"deploy: {line}")
    return line
