"""KFP component `start_run`: open the MLflow parent run of this pipeline run and record the data it trains on."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def start_run(config: str, overrides: list, world: Input[Dataset], encoder: Input[Model], tags: Input[Dataset],
              datastore: Input[Dataset], lm: Input[Model]) -> str:
    """Create the parent run (params = the recipe; metrics and tags = the data artifacts' counts, hashes and
    fingerprints; the other declared datastores from their manifests) and return its id; later tasks nest their
    runs under it. ``datastore`` is the model's (model.datastore)."""
    from tuna.kfp import tasks

    data = {"world": world.metadata, "encoder": encoder.metadata, "mine": tags.metadata,
            f"index_{datastore.metadata.get('name', 'A')}": datastore.metadata, "lm": lm.metadata}
    with tasks.task("start_run"):
        run_id = tasks.start_run(config, overrides, data)
    print(f"start_run: MLflow parent run {run_id}")
    return run_id
