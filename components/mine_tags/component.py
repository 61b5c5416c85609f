"""KFP component `mine_tags`: `tuna mine` - tags (objects, attributes, entities) mined from the web captions."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def mine_tags(config: str, overrides: list, world: Input[Dataset], tags: Output[Dataset], domain: str = "all", digest: str = ""):
    """Mine domain A, B or all (each skipped when up to date); metadata per domain: captions, skipped, unique
    tags, input hash, uri."""
    # digest (validate's digest of the resolved recipe and sources) is read by nothing: it keys the cache
    from tuna.kfp import tasks

    with tasks.task("mine_tags"):
        result = tasks.run_mine(config, overrides, domain)
    tasks.publish(tags, result)
    print(f"mine_tags: {result.summary} (world {world.metadata.get('fingerprint')})")
