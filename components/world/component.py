"""KFP component `world`: `tuna world` - the bundled world (taxonomy, images, every corpus in its real format)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def world(config: str, overrides: list, dataset: Output[Dataset], digest: str = ""):
    """Generate the world into run.data_dir (skipped when up to date); the artifact holds its manifest, the
    metadata its counts, SHA-256 digests, fingerprint and uri."""
    # digest (validate's digest of the resolved recipe and sources) is read by nothing: it keys the cache
    from tuna.kfp import tasks

    with tasks.task("world"):
        result = tasks.run_world(config, overrides)
    tasks.publish(dataset, result)
    print(f"world: {result.summary}")
