"""KFP component `build_index`: `tuna index --datastore NAME` - a Milvus datastore (A, B, A_captions or all)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_index(config: str, overrides: list, encoder: Input[Model], tags: Input[Dataset], index: Output[Dataset],
                datastore: str = "all", digest: str = ""):
    """Embed the web corpus with the encoder and build `datastore` (A, B, A_captions or all; skipped when up to
    date); metadata: rows, skipped, collection, corpus / tags hashes, encoder fingerprint, uri."""
    # digest (validate's digest of the resolved recipe and sources) is read by nothing: it keys the cache
    from tuna.kfp import tasks

    with tasks.task(f"build_index {datastore}"):
        result = tasks.run_index(config, overrides, datastore)
    tasks.publish(index, result)
    print(f"build_index: {result.summary} (encoder {encoder.metadata.get('fingerprint')}, tags {tags.metadata.get('status')})")
