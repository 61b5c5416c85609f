"""The TUNA model: configuration, modeling and builders (pure torch + transformers; no I/O, no infra).

``configuration_tuna.TunaConfig`` + ``modeling_tuna.TunaForConditionalGeneration`` are the Hugging Face
pair; ``processing_tuna.TunaProcessor`` (with the chat template) turns images, prompts and tags into their
tensors; ``modeling_tuna.TunaPromptEncoder`` is the model minus the LM's layers (what serving's retrieval
step loads); ``builder`` composes a saved CLIP and a saved causal LM, lists the trainable groups per stage
and exports the baseline (tag_mode "none") as a ``LlavaForConditionalGeneration``; ``from_llava`` starts TUNA from a
LLaVA-1.5 folder + a full CLIP; ``architecture`` counts the model on the meta device (`tuna plan`); ``auto``
registers TUNA with transformers' Auto classes (importing this package is enough).
"""

from tuna.model.auto import register_auto_classes
from tuna.model.builder import (
    ModelLoadError,
    build_tuna,
    set_trainable,
    stage_parameters,
    to_llava,
)
from tuna.model.configuration_tuna import TunaConfig
from tuna.model.modeling_tuna import (
    IGNORE_INDEX,
    ModelInputError,
    TunaCausalLMOutput,
    TunaForConditionalGeneration,
    TunaMergedInputs,
    TunaPromptEncoder,
)
from tuna.model.processing_tuna import TunaProcessor

__all__ = [
    "IGNORE_INDEX", "ModelInputError", "ModelLoadError", "TunaCausalLMOutput", "TunaConfig",
    "TunaForConditionalGeneration", "TunaMergedInputs", "TunaProcessor", "TunaPromptEncoder", "build_tuna",
    "register_auto_classes", "set_trainable", "stage_parameters", "to_llava",
]
