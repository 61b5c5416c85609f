"""`TunaForConditionalGeneration`: LLaVA plus retrieved tags, encoded against the image and weighted by relevance.

Parts (B images, k tags per image, P visual tokens, T LM tokens per tag, D the LM width):

- frozen CLIP vision tower -> hidden state ``vision_feature_layer`` (CLS kept or dropped, grid optionally pooled) ->
  connector -> P visual tokens: exactly LLaVA's path;
- image-aware tag encoder: each tag's CLIP text feature (text tower + text projection, frozen) is the
  query of a multi-head cross-attention over the same CLIP patch features; the result goes through the
  SAME connector into the LM space -> one visual-tag embedding per tag;
- adaptive weight tuner: cosine(tag text feature, image feature) in CLIP's joint space, less ``tuner_rank_prior`` per
  retrieval rank, times a learned scale -> softmax over the image's valid tags -> one weight per tag (for provenance);
- merged sequence: the ``<image>`` id in ``input_ids`` becomes ``[P visual tokens][tag block]`` (tag block first with
  ``tag_position="before"``), the tag block being, for tag i = 1..k, ``[visual-tag embedding_i][word embeddings of tag i
  (T slots)]``, all scaled by its weight, heaviest first with ``tuner_order``. Absent tags and padding slots stay in
  place, masked out of attention and positions (position ids count attended tokens): every example has one length.

``tag_mode="none"`` has no tag block at all and is numerically a ``LlavaForConditionalGeneration``
(see ``tuna.model.builder.to_llava``).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    CLIPModel,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache

from tuna.errors import TunaError
from tuna.model.clip_model import VectorScaleCLIPModel, vectorize_scalar_parameters
from tuna.model.configuration_tuna import TunaConfig
from tuna.model.label_loss import IGNORE_INDEX, label_position_loss
from tuna.model.outputs import TunaCausalLMOutput, TunaMergedInputs
from tuna.model.vision_features import crop_grid, select_features


class ModelInputError(TunaError, ValueError):
    """A model input has the wrong shape or content; the message names the value and the fix."""


# ----------------------------------------------------------------------------------------- components


class TunaProjector(nn.Module):
    """The connector: CLIP width -> LM width. Layer names match ``LlavaMultiModalProjector`` (linear_1, act, linear_2)."""

    def __init__(self, kind: str, in_dim: int, out_dim: int, act: str = "gelu") -> None:
        super().__init__()
        if kind not in ("linear", "mlp2x_gelu"):
            raise ValueError(f"Unknown projector type: {kind!r}; use 'linear' or 'mlp2x_gelu'")
        self.kind = kind
        self.linear_1 = nn.Linear(in_dim, out_dim)
        if kind == "mlp2x_gelu":
            self.act = ACT2FN[act]
            self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (..., Dv) -> (..., D)
        x = self.linear_1(features.to(self.linear_1.weight.dtype))
        if self.kind == "mlp2x_gelu":
            x = self.linear_2(self.act(x))
        return x


class TagEncoder(nn.Module):
    """Image-aware tag encoder: a tag's CLIP text feature attends over the image's CLIP patch features.

    Multi-head cross-attention written out with plain Linear layers (each weight used by its own module's
    forward, which ZeRO-3 parameter gathering needs). The value and output projections start at identity,
    so an untrained encoder returns a tag-attended average of the patch features, a vector the connector
    already knows how to map.
    """

    def __init__(self, text_dim: int, vision_dim: int, num_heads: int) -> None:
        super().__init__()
        if vision_dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the vision width {vision_dim}")
        self.num_heads = num_heads
        self.query_norm = nn.LayerNorm(text_dim)
        self.q_proj = nn.Linear(text_dim, vision_dim)
        self.k_proj = nn.Linear(vision_dim, vision_dim)
        self.v_proj = nn.Linear(vision_dim, vision_dim)
        self.o_proj = nn.Linear(vision_dim, vision_dim)

    def forward(self, tag_features: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        """(B, k, Dt) tag features, (B, P, Dv) patch features -> (B, k, Dv) visual-tag features."""
        b, k, _ = tag_features.shape
        p, h = patch_features.shape[1], self.num_heads
        dtype = self.q_proj.weight.dtype
        patches = patch_features.to(dtype)
        q = self.q_proj(self.query_norm(tag_features.to(dtype))).view(b, k, h, -1).transpose(1, 2)  # (B, h, k, d)
        key = self.k_proj(patches).view(b, p, h, -1).transpose(1, 2)                                 # (B, h, P, d)
        value = self.v_proj(patches).view(b, p, h, -1).transpose(1, 2)                               # (B, h, P, d)
        out = F.scaled_dot_product_attention(q, key, value)                                          # (B, h, k, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, k, -1))                                    # (B, k, Dv)


class AdaptiveWeightTuner(nn.Module):
    """Tag relevance: softmax over an image's valid tags of ``scale * (cosine(tag feature, image feature) -
    rank_prior * rank)``, rank 0 being the first retrieved tag."""

    def __init__(self, logit_scale_init: float, rank_prior: float = 0.0) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor([math.log(logit_scale_init)]))  # (1,) learned in stage 2; not 0-d: DeepSpeed broadcasts params as bytes
        self.rank_prior = float(rank_prior)

    def forward(self, tag_features: torch.Tensor, image_features: torch.Tensor, tag_mask: torch.Tensor) -> torch.Tensor:
        """(B, k, Dt), (B, Dt), (B, k) bool -> (B, k) weights; each row sums to 1 over its valid tags (all 0 if none)."""
        cos = torch.einsum("bkd,bd->bk", F.normalize(tag_features.float(), dim=-1),
                           F.normalize(image_features.float(), dim=-1))              # (B, k)
        if self.rank_prior:
            cos = cos - self.rank_prior * torch.arange(cos.shape[-1], device=cos.device, dtype=cos.dtype)
        logits = (self.logit_scale.float().exp() * cos).masked_fill(~tag_mask, float("-inf"))
        return _masked_softmax(logits, tag_mask)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; rows without a valid entry are all 0 (not NaN)."""
    any_valid = mask.any(-1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(~any_valid, 0.0), dim=-1)
    return torch.where(mask & any_valid, probs, torch.zeros_like(probs))


def uniform_weights(tag_mask: torch.Tensor) -> torch.Tensor:
    """(B, k) bool -> (B, k) float: 1 / n_valid on valid tags, 0 elsewhere (the weights with the tuner off)."""
    m = tag_mask.float()
    return m / m.sum(-1, keepdim=True).clamp(min=1.0)


# ----------------------------------------------------------------------------------------- the input side


class TunaInputs:
    """Image, tags and text -> the merged sequence the LM reads (shared by the model and its prompt encoder).

    Needs ``config`` (a :class:`TunaConfig`), the submodules ``clip``, ``projector``, ``tag_encoder`` and
    ``tuner``, and ``get_input_embeddings()`` (the LM's word embedding table).
    """

    config: TunaConfig
    clip: CLIPModel
    projector: TunaProjector
    tag_encoder: TagEncoder
    tuner: AdaptiveWeightTuner

    # ---------------------------------------------------------------------------- encoders

    def _clip_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.clip.parameters())

    def encode_image(self, pixel_values: torch.Tensor, crops: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> patch features (B, P, Dv) from ``vision_feature_layer`` (``vision_crops`` CLS tokens last;
        ``crops=False`` leaves them out, for callers that read only the image feature) and the image feature (B, Dt).

        The image feature is CLIP's own image embedding (post-LayerNorm CLS, visual projection): the
        joint space the tuner compares tags in.
        """
        patches, image_features, _ = self.encode_image_and_views(pixel_values, None, crops)
        return patches, image_features

    def encode_image_and_views(self, pixel_values: torch.Tensor, views: torch.Tensor | None,
                               crops: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`encode_image` of ``pixel_values`` plus the image features (M, Dt) of ``views`` (M, 3, S, S), other
        images such as the region cells a server retrieves for, in one pass of the vision tower with the crops."""
        vision = self.config.clip_config.vision_config
        want = (vision.num_channels, vision.image_size, vision.image_size)
        for name, x in (("pixel_values", pixel_values), ("views", views)):
            if x is not None and (x.ndim != 4 or tuple(x.shape[1:]) != want):
                raise ModelInputError(
                    f"{name} has shape {tuple(x.shape)} but the vision tower expects (B, {want[0]}, {want[1]}, "
                    f"{want[2]}); preprocess images with the CLIP image processor saved with the encoder")
        b, n = pixel_values.shape[0], self.config.vision_crops if crops else 0
        pixels = pixel_values.to(self.clip.dtype)
        batch = [pixels] + ([crop_grid(pixels, n)] if n else []) + ([views.to(self.clip.dtype)] if views is not None else [])
        with torch.set_grad_enabled(self._clip_grad()):
            out = self.clip.vision_model(pixel_values=torch.cat(batch) if len(batch) > 1 else pixels,
                                         output_hidden_states=True)
            hidden = out.hidden_states[self.config.vision_feature_layer]
            patches = select_features(hidden[:b], self.config.vision_feature_select_strategy,
                                      self.config.vision_feature_pool)                # (B, P, Dv)
            if n:                                                                    # + (B, n*n, Dv) crop CLS
                patches = torch.cat([patches, hidden[b:b + b * n * n, 0].reshape(b, n * n, -1)], dim=1)
            image_features = self.clip.visual_projection(out.pooler_output[:b])      # (B, Dt)
            extra = self.clip.visual_projection(out.pooler_output[b + b * n * n:]) if views is not None else None
        return patches, image_features, extra

    def encode_tag_texts(self, tag_clip_input_ids: torch.Tensor, tag_mask: torch.Tensor,
                         tag_clip_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP-tokenised tags (B, k, Tc) -> CLIP text features (B, k, Dt); absent tags (mask 0) get zeros."""
        b, k, tc = tag_clip_input_ids.shape
        limit = self.config.clip_config.text_config.max_position_embeddings
        if tc > limit:
            raise ModelInputError(f"tag_clip_input_ids has {tc} tokens per tag but the CLIP text tower takes at most "
                                  f"{limit}; truncate tags with the CLIP tokenizer (truncation=True)")
        if tag_clip_attention_mask is not None and tag_clip_attention_mask.shape != tag_clip_input_ids.shape:
            raise ModelInputError(f"tag_clip_attention_mask has shape {tuple(tag_clip_attention_mask.shape)}, "
                                  f"tag_clip_input_ids {tuple(tag_clip_input_ids.shape)}; they must match")
        dim = self.config.clip_config.projection_dim
        flat_valid = tag_mask.reshape(-1)                                           # (B*k,)
        feats = torch.zeros(b * k, dim, dtype=self.clip.dtype, device=tag_clip_input_ids.device)
        if flat_valid.any():
            ids = tag_clip_input_ids.reshape(b * k, tc)[flat_valid]                 # (n, Tc)
            mask = None if tag_clip_attention_mask is None else tag_clip_attention_mask.reshape(b * k, tc)[flat_valid]
            with torch.set_grad_enabled(self._clip_grad()):
                pooled = self.clip.text_model(input_ids=ids, attention_mask=mask).pooler_output   # (n, Dtxt)
                feats = feats.index_put((flat_valid.nonzero(as_tuple=True)[0],), self.clip.text_projection(pooled))
        return feats.reshape(b, k, dim)

    def encode_tags(self, patches: torch.Tensor, image_features: torch.Tensor, tag_input_ids: torch.Tensor,
                    tag_attention_mask: torch.Tensor | None = None, tag_mask: torch.Tensor | None = None,
                    tag_clip_input_ids: torch.Tensor | None = None,
                    tag_clip_attention_mask: torch.Tensor | None = None,
                    tag_features: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Build the tag block.

        Inputs: patches (B, P, Dv), image_features (B, Dt), LM-tokenised tags ``tag_input_ids`` (B, k, T)
        with ``tag_attention_mask`` (B, k, T) (default: all tokens real), ``tag_mask`` (B, k) valid tags
        (default: tags with at least one real token), and either CLIP-tokenised tags
        ``tag_clip_input_ids`` (B, k, Tc) or precomputed CLIP text features ``tag_features`` (B, k, Dt).

        Returns block (B, k*(1+T), D), block_mask (B, k*(1+T)), weights (B, k), visual-tag embeddings (B, k, D).
        """
        b = patches.shape[0]
        k, max_t = self.config.num_tags, self.config.max_tag_tokens
        if tag_input_ids.ndim != 3:
            raise ModelInputError(f"tag_input_ids must be (batch, num_tags, tokens), got shape {tuple(tag_input_ids.shape)}")
        if tag_input_ids.shape[0] != b:
            raise ModelInputError(f"tag_input_ids has {tag_input_ids.shape[0]} rows but there are {b} images")
        if tag_input_ids.shape[1] != k:
            raise ModelInputError(f"tag_input_ids has {tag_input_ids.shape[1]} tags per image but num_tags is {k}; "
                                  f"pad to {k} tags and mark the absent ones with tag_mask=0")
        t = tag_input_ids.shape[2]
        if t > max_t:
            raise ModelInputError(f"tag_input_ids has {t} tokens per tag but max_tag_tokens is {max_t}; truncate tags "
                                  f"in the data pipeline or raise model.max_tag_tokens")
        tok_mask = (torch.ones_like(tag_input_ids, dtype=torch.bool) if tag_attention_mask is None
                    else tag_attention_mask.bool())                                 # (B, k, T)
        if tok_mask.shape != tag_input_ids.shape:
            raise ModelInputError(f"tag_attention_mask has shape {tuple(tok_mask.shape)}, tag_input_ids "
                                  f"{tuple(tag_input_ids.shape)}; they must match")
        valid = tok_mask.any(-1) if tag_mask is None else tag_mask.bool()          # (B, k)
        if valid.shape != (b, k):
            raise ModelInputError(f"tag_mask has shape {tuple(valid.shape)} but must be (batch, num_tags) = ({b}, {k})")
        tok_mask = tok_mask & valid[..., None]

        if tag_features is None:
            if tag_clip_input_ids is None:
                raise ModelInputError(f"tag_mode {self.config.tag_mode!r} needs the tags' CLIP text features: pass "
                                      f"tag_clip_input_ids (B, {k}, Tc) from the CLIP tokenizer or tag_features "
                                      f"(B, {k}, {self.config.clip_config.projection_dim})")
            if tuple(tag_clip_input_ids.shape[:2]) != (b, k) or tag_clip_input_ids.ndim != 3:
                raise ModelInputError(f"tag_clip_input_ids has shape {tuple(tag_clip_input_ids.shape)} but must be "
                                      f"({b}, {k}, Tc): one CLIP-tokenised text per tag")
            tag_features = self.encode_tag_texts(tag_clip_input_ids, valid, tag_clip_attention_mask)
        elif tuple(tag_features.shape) != (b, k, self.config.clip_config.projection_dim):
            raise ModelInputError(f"tag_features has shape {tuple(tag_features.shape)} but must be ({b}, {k}, "
                                  f"{self.config.clip_config.projection_dim}) (CLIP text features, projection_dim)")

        tag_features = F.normalize(tag_features.float(), dim=-1)                   # (B, k, Dt)
        if self.config.use_tuner:
            weights = self.tuner(tag_features, image_features, valid)             # (B, k)
        else:
            weights = uniform_weights(valid)                                       # (B, k)
        scale = weights * valid.sum(-1, keepdim=True) if self.config.tag_weight_norm == "mean" else weights

        visual_tags = self.projector(self.tag_encoder(tag_features, patches))     # (B, k, D)
        embed = self.get_input_embeddings()
        words = embed(tag_input_ids.masked_fill(~tok_mask, 0))                    # (B, k, T, D)
        block = torch.cat([visual_tags[:, :, None].to(words.dtype), words], dim=2)  # (B, k, 1+T, D)
        block_mask = torch.cat([valid[..., None], tok_mask], dim=2)               # (B, k, 1+T)
        block = block * (scale[..., None, None] * block_mask[..., None]).to(block.dtype)
        if self.config.use_tuner and self.config.tuner_order:                     # heaviest tag first
            order = torch.sort(weights.detach().masked_fill(~valid, -1.0), dim=-1, descending=True, stable=True).indices
            block = block.gather(1, order[:, :, None, None].expand_as(block))
            block_mask = block_mask.gather(1, order[:, :, None].expand_as(block_mask))
        return block.reshape(b, k * (1 + t), -1), block_mask.reshape(b, k * (1 + t)), weights, visual_tags

    # ---------------------------------------------------------------------------- merging

    def _image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B,) index of each row's single `<image>` id; raises if a row has none or several."""
        is_image = input_ids == self.config.image_token_index
        counts = is_image.sum(-1)
        bad = (counts != 1).nonzero(as_tuple=True)[0]
        if len(bad):
            i = int(bad[0])
            raise ModelInputError(
                f"input_ids row {i} holds {int(counts[i])} <image> tokens (id {self.config.image_token_index}); "
                f"each example needs exactly one, where the image goes ({len(bad)} of {len(counts)} rows are wrong)")
        return is_image.int().argmax(-1)

    def prepare_multimodal_inputs(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None, tag_input_ids: torch.Tensor | None = None,
        tag_attention_mask: torch.Tensor | None = None, tag_mask: torch.Tensor | None = None,
        tag_clip_input_ids: torch.Tensor | None = None, tag_clip_attention_mask: torch.Tensor | None = None,
        tag_features: torch.Tensor | None = None,
        image_outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> TunaMergedInputs:
        """Replace each row's `<image>` id (input_ids (B, L)) by [visual tokens][tag block] (the module doc).

        Tag inputs are ignored in tag_mode "none" (one batch feeds TUNA and the baseline alike). ``image_outputs``:
        :meth:`encode_image` of these ``pixel_values`` (a caller that encoded them to retrieve tags passes it).
        """
        if input_ids.ndim != 2:
            raise ModelInputError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        b, length = input_ids.shape
        if image_outputs is None and pixel_values is None:
            raise ModelInputError("pass pixel_values (B, 3, S, S) or image_outputs (encode_image of them)")
        if pixel_values is not None and pixel_values.shape[0] != b:
            raise ModelInputError(f"pixel_values has {pixel_values.shape[0]} images but input_ids has {b} rows; "
                                  f"pass one image per example")
        for name, t in (("attention_mask", attention_mask), ("labels", labels)):
            if t is not None and tuple(t.shape) != (b, length):
                raise ModelInputError(f"{name} has shape {tuple(t.shape)} but input_ids has {(b, length)}")
        where = self._image_positions(input_ids)                                   # (B,)
        patches, image_features = image_outputs or self.encode_image(pixel_values)  # (B, P, Dv), (B, Dt)
        if patches.shape[0] != b or image_features.shape[0] != b:
            raise ModelInputError(f"image_outputs hold {patches.shape[0]} images but input_ids has {b} rows; pass "
                                  f"encode_image(pixel_values) of the same batch")
        visual = self.projector(patches)                                           # (B, P, D)
        text = self.get_input_embeddings()(input_ids.masked_fill(input_ids == self.config.image_token_index, 0))
        inserted, inserted_mask = visual.to(text.dtype), torch.ones(visual.shape[:2], dtype=torch.bool, device=text.device)
        weights = visual_tags = None
        if self.config.tag_mode != "none":
            if tag_input_ids is None:
                raise ModelInputError(f"tag_mode {self.config.tag_mode!r} needs tag_input_ids (B, {self.config.num_tags}, "
                                      f"T): the LM-tokenised retrieved tags; use tag_mode 'none' for the baseline")
            block, block_mask, weights, visual_tags = self.encode_tags(
                patches, image_features, tag_input_ids, tag_attention_mask, tag_mask, tag_clip_input_ids,
                tag_clip_attention_mask, tag_features)
            parts = [(inserted, inserted_mask), (block.to(text.dtype), block_mask)][::1 if self.config.tag_position == "after" else -1]
            inserted, inserted_mask = (torch.cat(list(t), dim=1) for t in zip(*parts))   # (B, P + k(1+T), D), (B, P + k(1+T))
        mask = (torch.ones_like(input_ids, dtype=torch.long) if attention_mask is None else attention_mask.long())
        embeds, masks, labs = [], [], []
        for i in range(b):
            p = int(where[i])
            embeds.append(torch.cat([text[i, :p], inserted[i], text[i, p + 1:]]))
            masks.append(torch.cat([mask[i, :p], inserted_mask[i].long(), mask[i, p + 1:]]))
            if labels is not None:
                ignore = torch.full((inserted.shape[1],), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
                labs.append(torch.cat([labels[i, :p], ignore, labels[i, p + 1:]]))
        merged_mask = torch.stack(masks)                                           # (B, L')
        return TunaMergedInputs(
            inputs_embeds=torch.stack(embeds), attention_mask=merged_mask, position_ids=positions_from_mask(merged_mask),
            labels=torch.stack(labs) if labels is not None else None, image_hidden_states=visual,
            tag_weights=weights, tag_hidden_states=visual_tags)


# ----------------------------------------------------------------------------------------- the model


class TunaForConditionalGeneration(PreTrainedModel, GenerationMixin, TunaInputs):
    """CLIP (frozen) + connector + image-aware tag encoder + adaptive weight tuner + causal LM.

    Submodules: ``clip`` (a ``CLIPModel``), ``projector``, ``tag_encoder``, ``tuner``, ``language_model``
    (an ``AutoModelForCausalLM``). Pass already-loaded ``clip`` / ``language_model`` to adopt their weights
    (what ``tuna.model.builder.build_tuna`` does); otherwise they are built from ``config``.
    """

    config_class = TunaConfig
    base_model_prefix = "tuna"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]

    def __init__(self, config: TunaConfig, clip: CLIPModel | None = None,
                 language_model: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        clip_cfg = config.clip_config
        self.clip = clip if clip is not None else VectorScaleCLIPModel(clip_cfg)
        vectorize_scalar_parameters(self.clip)
        lm_width = config.text_config.hidden_size
        self.projector = TunaProjector(config.projector_type, clip_cfg.vision_config.hidden_size, lm_width,
                                       config.projector_hidden_act)
        self.tag_encoder = TagEncoder(clip_cfg.projection_dim, clip_cfg.vision_config.hidden_size,
                                      config.tag_encoder_num_heads)
        self.tuner = AdaptiveWeightTuner(config.tuner_logit_scale_init, config.tuner_rank_prior)
        self.language_model = (language_model if language_model is not None
                               else AutoModelForCausalLM.from_config(config.text_config))
        for adopted in (clip, language_model):
            if adopted is not None:
                _mark_initialised(adopted)
        self.post_init()
        self.clip.requires_grad_(False)  # both CLIP towers are frozen by design

    # ---------------------------------------------------------------------------- HF plumbing

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then CLIP frozen again (loading materialises fresh parameters)."""
        model = super().from_pretrained(*args, **kwargs)
        (model[0] if isinstance(model, tuple) else model).clip.requires_grad_(False)
        return model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        tag_encoder = getattr(self, "tag_encoder", None)
        if tag_encoder is not None and (module is tag_encoder.v_proj or module is tag_encoder.o_proj):
            init.eye_(module.weight)   # identity value path: see TagEncoder
            init.zeros_(module.bias)
        elif isinstance(module, AdaptiveWeightTuner):
            init.constant_(module.logit_scale, math.log(self.config.tuner_logit_scale_init))

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # ---------------------------------------------------------------------------- forward / generate

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,         # (B, L) with one `<image>` id per row when pixel_values
        pixel_values: torch.Tensor | None = None,          # (B, 3, S, S)
        attention_mask: torch.Tensor | None = None,        # (B, L)
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,         # (B, L, D) already merged (generation prefill)
        labels: torch.LongTensor | None = None,            # (B, L)
        tag_input_ids: torch.LongTensor | None = None,     # (B, k, T) LM-tokenised tags
        tag_attention_mask: torch.Tensor | None = None,    # (B, k, T)
        tag_mask: torch.Tensor | None = None,              # (B, k) valid tags
        tag_clip_input_ids: torch.LongTensor | None = None,  # (B, k, Tc) CLIP-tokenised tags
        tag_clip_attention_mask: torch.Tensor | None = None,  # (B, k, Tc)
        tag_features: torch.Tensor | None = None,          # (B, k, Dt) precomputed CLIP text features
        image_outputs: tuple[torch.Tensor, torch.Tensor] | None = None,  # encode_image(pixel_values) precomputed
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loss_only: bool = False,
        **kwargs,
    ) -> TunaCausalLMOutput:
        """Merge image, tags and text (when ``pixel_values`` or their ``image_outputs`` are given), then run the LM;
        loss when ``labels``. ``loss_only`` (training): the loss from the LM head at the labelled positions alone
        (:mod:`tuna.model.label_loss`; the same value, no ``logits`` returned)."""
        merged = None
        if pixel_values is not None or image_outputs is not None:
            if input_ids is None or inputs_embeds is not None:
                raise ModelInputError("with pixel_values pass input_ids holding one <image> id per row, not inputs_embeds")
            if position_ids is not None:
                raise ModelInputError("position_ids were given with pixel_values, but positions belong to the merged "
                                      "sequence and are computed from it; drop them")
            merged = self.prepare_multimodal_inputs(
                input_ids, pixel_values, attention_mask, labels, tag_input_ids, tag_attention_mask, tag_mask,
                tag_clip_input_ids, tag_clip_attention_mask, tag_features, image_outputs)
            input_ids, inputs_embeds, attention_mask, labels = None, merged.inputs_embeds, merged.attention_mask, merged.labels
            position_ids = merged.position_ids
        elif input_ids is not None and bool((input_ids == self.config.image_token_index).any()):
            n = int((input_ids == self.config.image_token_index).sum())
            raise ModelInputError(f"input_ids hold {n} <image> tokens (id {self.config.image_token_index}) but no "
                                  f"pixel_values were given; pass the image or drop the placeholder")
        elif any(t is not None for t in (tag_input_ids, tag_clip_input_ids, tag_features)):
            raise ModelInputError("tag inputs were given without pixel_values; tags are encoded against an image")
        kwargs.pop("return_dict", None)  # always a dict inside; the TUNA output is a ModelOutput either way
        if loss_only and merged is not None and labels is not None and not kwargs and past_key_values is None:
            loss = label_position_loss(self.language_model, inputs_embeds, attention_mask, position_ids, labels)
            if loss is not None:
                return TunaCausalLMOutput(loss=loss, tag_weights=merged.tag_weights, attention_mask=attention_mask,
                                          image_hidden_states=merged.image_hidden_states, labels=labels,
                                          tag_hidden_states=merged.tag_hidden_states)
        out = self.language_model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, labels=labels, use_cache=use_cache, logits_to_keep=logits_to_keep,
            return_dict=True, **kwargs)
        provenance = {} if merged is None else {
            "tag_weights": merged.tag_weights, "image_hidden_states": merged.image_hidden_states,
            "tag_hidden_states": merged.tag_hidden_states, "attention_mask": merged.attention_mask,
            "labels": merged.labels}
        return TunaCausalLMOutput(loss=out.loss, logits=out.logits, past_key_values=out.past_key_values,
                                  hidden_states=out.hidden_states, attentions=out.attentions, **provenance)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        tag_input_ids: torch.LongTensor | None = None,
        tag_attention_mask: torch.Tensor | None = None,
        tag_mask: torch.Tensor | None = None,
        tag_clip_input_ids: torch.LongTensor | None = None,
        tag_clip_attention_mask: torch.Tensor | None = None,
        tag_features: torch.Tensor | None = None,
        **kwargs,
    ):
        """Generate: with ``pixel_values``, prefill the merged embeddings, then decode as the LM does.

        With an image the prompt is embeddings, not ids, so the result holds only the NEW tokens (B, n_new)
        (as LLaVA's generate). Batched prompts must be left-padded. Without ``pixel_values`` this is the
        LM's own generate (``inputs_embeds`` from :meth:`prepare_multimodal_inputs` may be passed, to keep
        its ``tag_weights`` for provenance).
        """
        if pixel_values is None:
            if input_ids is not None:
                kwargs["input_ids"] = input_ids
            return super().generate(attention_mask=attention_mask, **kwargs)
        if input_ids is None:
            raise ModelInputError("generate with pixel_values needs input_ids holding one <image> id per row")
        merged = self.prepare_multimodal_inputs(input_ids, pixel_values, attention_mask, None, tag_input_ids,
                                                tag_attention_mask, tag_mask, tag_clip_input_ids,
                                                tag_clip_attention_mask, tag_features)
        return super().generate(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask, **kwargs)


# ----------------------------------------------------------------------------------------- the prompt encoder

PROMPT_ENCODER_PARTS = ("clip", "projector", "tag_encoder", "tuner")   # + the LM's word embeddings
PROMPT_ENCODER_WEIGHTS = "prompt_encoder.safetensors"


class TunaPromptEncoder(TunaInputs, nn.Module):
    """The model without the LM's layers: CLIP, connector, tag encoder, tuner and the LM's word embedding table
    (``embed_tokens``), all that :meth:`prepare_multimodal_inputs` runs; frozen. Serving's retrieval step loads
    this alone (``config.json`` + ``prompt_encoder.safetensors``, the model's own parameter names)."""

    def __init__(self, config: TunaConfig) -> None:
        super().__init__()
        clip_cfg, text_cfg = config.clip_config, config.text_config
        self.config = config
        self.clip = VectorScaleCLIPModel(clip_cfg)
        self.projector = TunaProjector(config.projector_type, clip_cfg.vision_config.hidden_size, text_cfg.hidden_size,
                                       config.projector_hidden_act)
        self.tag_encoder = TagEncoder(clip_cfg.projection_dim, clip_cfg.vision_config.hidden_size,
                                      config.tag_encoder_num_heads)
        self.tuner = AdaptiveWeightTuner(config.tuner_logit_scale_init, config.tuner_rank_prior)
        self.embed_tokens = nn.Embedding(text_cfg.vocab_size, text_cfg.hidden_size)
        self.requires_grad_(False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    @classmethod
    def from_model(cls, model: TunaForConditionalGeneration) -> TunaPromptEncoder:
        """The prompt encoder of a loaded model (its weights copied; the model is left as it is)."""
        embed = model.get_input_embeddings()
        if type(embed) is not nn.Embedding:  # e.g. a scaled embedding: its forward is not a plain lookup
            raise ModelInputError(f"the LM's input embeddings are a {type(embed).__name__}, not an nn.Embedding")
        with init.no_init_weights():
            encoder = cls(model.config)
        state = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in PROMPT_ENCODER_PARTS}
        encoder.load_state_dict({**state, "embed_tokens.weight": embed.weight}, strict=True)
        return encoder.eval()

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> TunaPromptEncoder:
        """Load what :meth:`save_pretrained` wrote (no LM weights are read)."""
        from safetensors.torch import load_file

        config = TunaConfig.from_pretrained(str(folder))
        with init.no_init_weights():
            encoder = cls(config)
        encoder.load_state_dict(load_file(os.path.join(folder, PROMPT_ENCODER_WEIGHTS)), strict=True)
        return encoder.eval()

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        self.config.save_pretrained(str(folder))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(folder, PROMPT_ENCODER_WEIGHTS),
                  metadata={"format": "pt"})


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask -> (B, L) position ids counting attended tokens only (as ``generate`` does); padding gets 0."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def _mark_initialised(module: nn.Module) -> None:
    """Tell ``post_init`` that an adopted, already-trained submodule must keep its weights."""
    for m in module.modules():
        m._is_hf_initialized = True
    for t in list(module.parameters()) + list(module.buffers()):
        t._is_hf_initialized = True


__all__ = ["IGNORE_INDEX", "PROMPT_ENCODER_WEIGHTS", "ModelInputError", "TunaCausalLMOutput", "TunaForConditionalGeneration",
           "TunaInputs", "TunaMergedInputs", "TunaPromptEncoder", "VectorScaleCLIPModel", "positions_from_mask", "uniform_weights"]
