"""The typed recipe: one frozen dataclass per section, loaded from YAML with ``key=value`` overrides.

A recipe (``configs/*.yaml``) holds data only; this package is its schema. Loading validates every key when
the recipe is built: an unknown key, a wrong type or an impossible value raises
:class:`~tuna.errors.ConfigError` with a one-line message naming the dotted key and what is allowed.

``sections.py`` holds the step sections, ``cluster.py`` the Kubernetes section, ``loader.py`` :class:`Recipe`
and :func:`load_recipe`.
"""

from tuna.recipe.cluster import MAX_GPUS_PER_NODE, ClusterConfig, TolerationConfig
from tuna.recipe.data import DataConfig, SourceConfig
from tuna.recipe.loader import Recipe, apply_override, build, load_recipe, section_fingerprint
from tuna.recipe.plan import LMSizes, PlanConfig, TextSizes, VisionSizes
from tuna.recipe.sections import (
    MAX_COARSE_PER_SUPERORDINATE,
    MAX_FINE_PER_COARSE,
    MAX_SUPERORDINATES,
    NUM_SHAPES,
    CorpusSizes,
    DomainConfig,
    EncoderConfig,
    EvalConfig,
    ImageFormat,
    IndexConfig,
    IndexType,
    LMConfig,
    Metric,
    MineConfig,
    ModelConfig,
    NoiseConfig,
    Precision,
    Projector,
    RunConfig,
    StageConfig,
    TagMode,
    TaxonomyConfig,
    TrackConfig,
    TrainConfig,
    WorldConfig,
)
from tuna.recipe.serving import ServeConfig

__all__ = [
    "MAX_COARSE_PER_SUPERORDINATE", "MAX_FINE_PER_COARSE", "MAX_GPUS_PER_NODE", "MAX_SUPERORDINATES", "NUM_SHAPES",
    "ClusterConfig", "CorpusSizes", "DataConfig", "SourceConfig", "DomainConfig", "EncoderConfig", "EvalConfig", "ImageFormat", "IndexConfig",
    "IndexType", "LMConfig", "LMSizes", "Metric", "MineConfig", "ModelConfig", "NoiseConfig", "PlanConfig", "Precision",
    "Projector", "Recipe", "TextSizes", "VisionSizes",
    "RunConfig", "ServeConfig", "StageConfig", "TagMode", "TaxonomyConfig", "TolerationConfig", "TrackConfig",
    "TrainConfig", "WorldConfig", "apply_override", "build", "load_recipe", "section_fingerprint",
]
