"""TUNA in transformers' Auto classes: after ``import tuna.model``, a saved TUNA folder loads with
``AutoConfig`` / ``AutoModel`` / ``AutoModelForImageTextToText`` ``.from_pretrained(folder)``.

Registration rather than ``auto_map`` + ``trust_remote_code``: the code that runs is the installed, versioned
``tuna`` package (pinned by constraints.txt, reviewed, tested) instead of ``.py`` files copied next to every
export that may drift from it, and loading a folder never executes code shipped inside it (registry artifacts
and copied folders included). The cost: ``import tuna.model`` before the Auto call.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from tuna.model.configuration_tuna import TunaConfig
from tuna.model.modeling_tuna import TunaForConditionalGeneration


def register_auto_classes() -> None:
    """Register ``model_type: tuna`` with the Auto classes (idempotent)."""
    AutoConfig.register("tuna", TunaConfig, exist_ok=True)
    AutoModel.register(TunaConfig, TunaForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(TunaConfig, TunaForConditionalGeneration, exist_ok=True)


register_auto_classes()   # as configuration_tuna registers AutoConfig: importing tuna.model is the opt-in

__all__ = ["register_auto_classes"]
