"""The language model: a byte-level BPE tokenizer and a tiny Llama pre-trained on the world text (`tuna lm`).

``tokenizer`` trains and wraps the tokenizer; ``pretrain`` holds the corpus, model, training loop and
probes (pure torch/transformers); ``language_model`` is the step: :func:`run_lm`, :func:`train_lm`,
:func:`load_lm` (any causal LM by path or hub id), :func:`lm_path`, :func:`is_up_to_date`.
"""

from tuna.foundation.lm.language_model import (
    LMUnavailable,
    flat_metrics,
    is_up_to_date,
    lm_path,
    load_lm,
    run_lm,
    summary_line,
    train_lm,
)

__all__ = ["LMUnavailable", "flat_metrics", "is_up_to_date", "lm_path", "load_lm", "run_lm", "summary_line", "train_lm"]
