"""KFP component `lm`: `tuna lm` - the tokenizer and tiny Llama trained on the world text (or model.language_model)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from tuna.kfp.options import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def lm(config: str, overrides: list, world: Input[Dataset], model: Output[Model], digest: str = ""):
    """Train (or load) the language model (skipped when up to date); metadata: fingerprint, parameters,
    vocabulary, validation perplexity, weights hash, uri."""
    # digest (validate's digest of the resolved recipe and sources) is read by nothing: it keys the cache
    from tuna.kfp import tasks

    with tasks.task("lm"):
        result = tasks.run_lm_step(config, overrides)
    tasks.publish(model, result)
    print(f"lm: {result.summary} (world {world.metadata.get('fingerprint')})")
