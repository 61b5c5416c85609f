"""KFP component `encoder`: `tuna encoder` - the tiny CLIP trained on the web corpora (or model.vision_tower)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def encoder(config: str, overrides: list, world: Input[Dataset], model: Output[Model], digest: str = ""):
    """Train (or load) the CLIP encoder (skipped when up to date); the artifact holds its manifest, the metadata
    its fingerprint, embedding size, zero-shot accuracy and uri."""
    # digest (validate's digest of the resolved recipe and sources) is read by nothing: it keys the cache
    from tuna.kfp import tasks

    with tasks.task("encoder"):
        result = tasks.run_encoder_step(config, overrides)
    tasks.publish(model, result)
    print(f"encoder: {result.summary} (world {world.metadata.get('fingerprint')})")
