"""The model variants a run trains, evaluates and serves: TUNA, the LLaVA baseline and the ablations.

A variant is the recipe's ``model:`` section with a few settings changed; everything else (data, training,
evaluation) is the same, so variants compare like for like. Train, eval, serve and the pipelines all read
the names from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tuna.errors import ConfigError

if TYPE_CHECKING:
    from tuna.recipe import Recipe

VARIANTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "tuna": {},                                # the recipe's model section as written
    "baseline": {"tag_mode": "none"},          # LLaVA: same class, data and training, no tags
    "captions": {"tag_mode": "captions"},      # retrieve captions instead of tags
    "random": {"tag_mode": "random"},          # random tags from the datastore's vocabulary
    "tuner_off": {"tuner": False},             # uniform tag weights
})
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
TRAINED = ("tuna", "baseline")                 # what `tuna run`, the pipeline and `make run` train: TUNA and its twin
ABLATIONS = ("tuna", "tuner_off", "captions", "random", "baseline")  # the default eval.ablations order
MODEL_KEYS = ("projector", "vision_feature_layer", "vision_feature_select_strategy", "vision_feature_pool",
              "vision_crops", "num_tags", "tag_mode", "tuner", "tuner_rank_prior", "tuner_order",
              "tag_position")
# Keys added after trained outputs existed, with the value they had then: a variant's training fingerprint
# names them only when they act (:func:`fingerprint_settings`).
TUNER_KEYS: Mapping[str, Any] = MappingProxyType({"tuner_rank_prior": 0.0, "tuner_order": False})
TAG_KEYS: Mapping[str, Any] = MappingProxyType({"tag_position": "after"})   # ... where any tag block is read


def check_variant(name: str) -> str:
    """``name`` when it is a known variant; one line naming the known ones otherwise."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; known: {', '.join(VARIANT_NAMES)}")
    return name


def variant_model(recipe: Recipe, variant: str) -> dict[str, Any]:
    """The model settings of ``variant``: the recipe's model section with the variant's changes."""
    model = {key: getattr(recipe.model, key) for key in MODEL_KEYS} | dict(VARIANTS[check_variant(variant)])
    return {key: model[key] for key in MODEL_KEYS}


def fingerprint_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``variant_model``'s settings as a training fingerprint counts them: the tuner's keys only where a tuner
    weighs tags (tag_mode other than none, tuner on) and they differ from :data:`TUNER_KEYS`; the tag keys only
    where there are tags and they differ from :data:`TAG_KEYS`."""
    untagged = settings["tag_mode"] == "none"
    late = {k: (v, untagged or not settings["tuner"]) for k, v in TUNER_KEYS.items()}
    late |= {k: (v, untagged) for k, v in TAG_KEYS.items()}
    return {k: v for k, v in settings.items() if k not in late or not (late[k][1] or v == late[k][0])}


def run_variants(recipe: Recipe, ablations: bool) -> tuple[str, ...]:
    """The variants a run trains and evaluates: TUNA and the baseline, or every ``eval.ablations`` variant."""
    return tuple(dict.fromkeys(recipe.eval.ablations)) if ablations else TRAINED


def parse_variants(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"tuna,baseline"`` (or a list) -> checked, de-duplicated names in order."""
    names = [v.strip() for v in (text.split(",") if isinstance(text, str) else text) if v.strip()]
    if not names:
        raise ConfigError(f"no variant in {text!r}; give one or more of {', '.join(VARIANT_NAMES)}")
    return tuple(dict.fromkeys(check_variant(n) for n in names))


def registered_name(recipe: Recipe, variant: str) -> str:
    """MLflow registry name of ``variant``: track.registered_model for TUNA, its ``llava`` twin for the baseline."""
    base = recipe.track.registered_model
    if variant == "tuna":
        return base
    if variant == "baseline":
        return base.replace("tuna", "llava") if "tuna" in base else f"{base}-baseline"
    return f"{base}-{variant.replace('_', '-')}"


__all__ = ["ABLATIONS", "MODEL_KEYS", "TAG_KEYS", "TRAINED", "TUNER_KEYS", "VARIANTS", "VARIANT_NAMES", "check_variant",
           "fingerprint_settings", "parse_variants", "registered_name", "run_variants", "variant_model"]
