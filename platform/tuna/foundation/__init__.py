"""Pre-training the foundation models a run builds TUNA from when no checkpoint is given: the tiny CLIP
(:mod:`tuna.foundation.clip`, `tuna encoder`) and the tiny LM with its tokenizer (:mod:`tuna.foundation.lm`, `tuna lm`)."""
