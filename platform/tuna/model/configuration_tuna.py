"""`TunaConfig`: the configuration of a TUNA model (CLIP towers + connector + tag encoder + tuner + causal LM).

A composite Hugging Face config, saved next to the weights by ``save_pretrained``. It holds the whole
``CLIPConfig`` (the vision tower feeds the visual tokens and the patch grid of the tag encoder; the text
tower encodes the tags) and the causal LM's config (``LlamaConfig`` by default; any causal LM type that
``AutoConfig`` knows), plus the few knobs of the method. Invalid values raise
:class:`~tuna.errors.ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

import math

from transformers import AutoConfig, CLIPConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from tuna.errors import ConfigError

PROJECTORS = ("linear", "mlp2x_gelu")
TAG_MODES = ("tags", "captions", "random", "none")
SELECT_STRATEGIES = ("default", "full")
WEIGHT_NORMS = ("mean", "sum")
IMAGE_TOKEN_INDEX = -200  # LLaVA's IMAGE_TOKEN_INDEX: the id standing for `<image>` in input_ids (never embedded)


class TunaConfig(PretrainedConfig):
    """Configuration of :class:`~tuna.model.modeling_tuna.TunaForConditionalGeneration`.

    Fields (defaults follow LLaVA-1.5 and the TUNA paper):

    - ``clip_config``: a ``CLIPConfig`` (vision + text towers, both frozen in the model).
    - ``text_config``: the causal LM's config (``LlamaConfig`` unless ``model_type`` says otherwise).
    - ``projector_type``: the connector, ``"mlp2x_gelu"`` (Linear-GELU-Linear, LLaVA-1.5) or ``"linear"``.
    - ``vision_feature_layer``: which CLIP hidden state feeds the connector; -2 = the penultimate layer
      (LLaVA); 0 is the embedding output and is refused.
    - ``vision_feature_select_strategy``: ``"default"`` drops the CLS token (P = grid**2 visual tokens),
      ``"full"`` keeps it.
    - ``vision_feature_pool``: average-pools the patch grid by this factor before the connector (1 = off, as
      LLaVA-1.5; 2 turns a 24x24 grid into 12x12, as LLaVA-OneVision's pooling); must divide the grid side.
    - ``vision_crops``: n > 0 also encodes an n x n grid of overlapping crops of the image (side 2/(n+1) of the
      image, stride half a crop; each resized to the tower's input, as LLaVA-NeXT's AnyRes tiles) and appends each
      crop's CLS from ``vision_feature_layer`` as one more visual token (n**2 in all); 0 = off (LLaVA-1.5).
    - ``num_tags`` (k): retrieved tags per image; ``max_tag_tokens``: LM tokens per tag, at most.
    - ``tag_mode``: ``"tags"`` / ``"random"`` / ``"captions"`` (same forward; the data pipeline decides
      what the "tags" are) or ``"none"`` (no tag block: the LLaVA baseline).
    - ``use_tuner``: weight tags by the adaptive weight tuner (else uniform weights).
    - ``tuner_logit_scale_init``: initial softmax temperature inverse of the tuner (learned in stage 2).
    - ``tuner_rank_prior``: cosine the tuner takes off per retrieval rank before its softmax (0 = none): the
      retrieval order is evidence too (a tag retrieved first is right more often than CLIP's cosine alone says).
    - ``tuner_order``: the LM reads the tags heaviest first by the tuner's weights (False = the retrieval order);
      ignored with ``use_tuner`` off.
    - ``tag_position``: ``"after"`` puts the tag block after the visual tokens (TUNA's layout), ``"before"`` ahead of
      them, so the visual tokens keep the distance to the question that a tagless (LLaVA) model learned.
    - ``tag_weight_norm``: ``"mean"`` scales each tag's embeddings by ``weight * n_valid_tags`` (uniform
      weights leave them unchanged), ``"sum"`` by ``weight`` itself.
    - ``tag_encoder_heads``: heads of the tag encoder's cross-attention (None = the vision tower's heads).
    - ``image_token_index``: the id of the single `<image>` placeholder in input_ids; it is replaced,
      never embedded, so it need not be in the LM vocabulary (default -200, LLaVA's constant).
    """

    model_type = "tuna"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs_defaults = {
        "clip_config": SubConfigSpec(config_class=CLIPConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    clip_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    vision_feature_pool: int = 1
    vision_crops: int = 0
    num_tags: int = 5
    max_tag_tokens: int = 8
    tag_mode: str = "tags"
    use_tuner: bool = True
    tuner_logit_scale_init: float = 10.0
    tuner_rank_prior: float = 0.0
    tuner_order: bool = False
    tag_position: str = "after"
    tag_weight_norm: str = "mean"
    tag_encoder_heads: int | None = None
    image_token_index: int = IMAGE_TOKEN_INDEX

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.validate_tuna()

    # ------------------------------------------------------------------------------------ validation

    def validate_tuna(self) -> None:
        """Raise ConfigError on an impossible value; called on construction (and on load)."""

        def need(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"TunaConfig.{key}: {message}")

        need(self.projector_type in PROJECTORS, "projector_type",
             f"Unknown projector type: {self.projector_type!r}; use one of {', '.join(PROJECTORS)}")
        need(self.tag_mode in TAG_MODES, "tag_mode", f"got {self.tag_mode!r}; use one of {', '.join(TAG_MODES)}")
        need(self.vision_feature_select_strategy in SELECT_STRATEGIES, "vision_feature_select_strategy",
             f"got {self.vision_feature_select_strategy!r}; use 'default' (drop CLS, as LLaVA) or 'full'")
        need(self.tag_weight_norm in WEIGHT_NORMS, "tag_weight_norm",
             f"got {self.tag_weight_norm!r}; use 'mean' or 'sum'")
        layers = self.clip_config.vision_config.num_hidden_layers
        layer = self.vision_feature_layer
        need(isinstance(layer, int) and not isinstance(layer, bool), "vision_feature_layer",
             f"must be one integer, got {layer!r}")
        need(layer not in (0, -(layers + 1)), "vision_feature_layer",
             f"{layer} is the embedding output, not a transformer layer; use -1 (last) or -2 (LLaVA's choice)")
        need(-layers <= layer <= layers, "vision_feature_layer",
             f"{layer} is out of range for a vision tower with {layers} layers; use 1..{layers} or -{layers}..-1")
        side = self.clip_config.vision_config.image_size // self.clip_config.vision_config.patch_size
        pool = self.vision_feature_pool
        need(isinstance(pool, int) and pool >= 1 and side % pool == 0, "vision_feature_pool",
             f"{pool!r} must be a positive divisor of the {side}x{side} patch grid side (1 = no pooling)")
        crops = self.vision_crops
        need(isinstance(crops, int) and not isinstance(crops, bool) and 0 <= crops <= 4, "vision_crops",
             f"{crops!r} must be 0 (no crops) or a crop grid side in 1..4")
        need(1 <= self.num_tags <= 64, "num_tags", f"must be in 1..64, got {self.num_tags}")
        need(1 <= self.max_tag_tokens <= 256, "max_tag_tokens", f"must be in 1..256, got {self.max_tag_tokens}")
        need(self.tuner_logit_scale_init > 0, "tuner_logit_scale_init",
             f"must be > 0 (it is a softmax inverse temperature), got {self.tuner_logit_scale_init}")
        need(isinstance(self.tuner_rank_prior, (int, float)) and math.isfinite(self.tuner_rank_prior)
             and 0 <= self.tuner_rank_prior <= 1, "tuner_rank_prior",
             f"must be a cosine in 0..1 taken off per rank (0 = none), got {self.tuner_rank_prior!r}")
        need(isinstance(self.tuner_order, bool), "tuner_order", f"must be true or false, got {self.tuner_order!r}")
        need(self.tag_position in ("after", "before"), "tag_position",
             f"must be 'after' (the tag block follows the visual tokens) or 'before', got {self.tag_position!r}")
        width = self.clip_config.vision_config.hidden_size
        heads = self.tag_encoder_heads or self.clip_config.vision_config.num_attention_heads
        need(heads >= 1 and width % heads == 0, "tag_encoder_heads",
             f"{heads} heads do not divide the vision width {width}; pick a divisor of {width}")

    # ------------------------------------------------------------------------------------ derived sizes

    @property
    def num_patches(self) -> int:
        """Visual tokens per image (P): the (pooled) patch grid, plus CLS with the "full" strategy, plus one per crop."""
        vision = self.clip_config.vision_config
        grid = (vision.image_size // vision.patch_size // self.vision_feature_pool) ** 2
        return grid + (self.vision_feature_select_strategy == "full") + self.vision_crops ** 2

    @property
    def tag_encoder_num_heads(self) -> int:
        return self.tag_encoder_heads or self.clip_config.vision_config.num_attention_heads


# Known to the Auto classes, so a saved TUNA folder loads its config (and its tokenizers) without warnings.
AutoConfig.register("tuna", TunaConfig, exist_ok=True)

__all__ = ["IMAGE_TOKEN_INDEX", "PROJECTORS", "TAG_MODES", "TunaConfig"]
