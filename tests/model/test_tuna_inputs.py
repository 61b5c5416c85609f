"""Bad inputs and bad configs: a ValueError subclass whose message names the numbers and the fix."""

from __future__ import annotations

import pytest
import torch

from tuna.errors import ConfigError
from tuna.model import ModelInputError, TunaConfig
from tuna_tiny import K, T, make_batch


@pytest.fixture
def model(make_model):
    return make_model()


def _raises(model, match: str, **batch):
    with pytest.raises(ModelInputError, match=match) as err, torch.no_grad():
        model(**batch)
    assert isinstance(err.value, ValueError)
    return str(err.value)


def test_tags_longer_than_max_tag_tokens(model):
    batch = make_batch(model)
    batch["tag_input_ids"] = torch.randint(3, 90, (2, K, T + 5))
    batch["tag_attention_mask"] = torch.ones(2, K, T + 5)
    msg = _raises(model, "tag_input_ids has 9 tokens per tag but max_tag_tokens is 4", **batch)
    assert "truncate tags in the data pipeline or raise model.max_tag_tokens" in msg


def test_wrong_pixel_shape(model):
    batch = make_batch(model)
    batch["pixel_values"] = torch.randn(2, 3, 64, 64)
    _raises(model, r"pixel_values has shape \(2, 3, 64, 64\) but the vision tower expects \(B, 3, 32, 32\)", **batch)


def test_one_image_per_batch_row(model):
    batch = make_batch(model)
    batch["pixel_values"] = batch["pixel_values"][:1]
    _raises(model, "pixel_values has 1 images but input_ids has 2 rows", **batch)


@pytest.mark.parametrize("count", [0, 2])
def test_exactly_one_image_token(model, count):
    batch = make_batch(model)
    ids = batch["input_ids"]
    ids[1][ids[1] == model.config.image_token_index] = 5
    ids[1, 1:1 + count] = model.config.image_token_index
    _raises(model, f"input_ids row 1 holds {count} <image> tokens \\(id -200\\); each example needs exactly one", **batch)


def test_image_token_without_pixels(model):
    batch = make_batch(model)
    _raises(model, "input_ids hold 2 <image> tokens .* but no pixel_values", input_ids=batch["input_ids"])


def test_wrong_number_of_tags(model):
    batch = make_batch(model)
    batch["tag_input_ids"] = batch["tag_input_ids"][:, :2]
    batch["tag_attention_mask"] = batch["tag_attention_mask"][:, :2]
    _raises(model, "tag_input_ids has 2 tags per image but num_tags is 3; pad to 3 tags", **batch)


def test_tag_mask_shape(model):
    batch = make_batch(model)
    batch["tag_mask"] = torch.ones(2, K + 1, dtype=torch.bool)
    _raises(model, r"tag_mask has shape \(2, 4\) but must be \(batch, num_tags\) = \(2, 3\)", **batch)


def test_tags_required_in_tags_mode(model):
    batch = make_batch(model)
    _raises(model, "tag_mode 'tags' needs tag_input_ids", input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])
    no_clip = {k: v for k, v in batch.items() if k != "tag_clip_input_ids"}
    _raises(model, "needs the tags' CLIP text features: pass tag_clip_input_ids", **no_clip)
    _raises(model, r"tag_features has shape \(2, 3, 8\) but must be \(2, 3, 16\)", **no_clip,
            tag_features=torch.randn(2, K, 8))


def test_clip_tag_tokens_beyond_the_text_tower(model):
    batch = make_batch(model)
    batch["tag_clip_input_ids"] = torch.ones(2, K, 20, dtype=torch.long)
    _raises(model, "tag_clip_input_ids has 20 tokens per tag but the CLIP text tower takes at most 16", **batch)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("vision_feature_layer", 0, "0 is the embedding output"),
    ("vision_feature_layer", -3, "-3 is the embedding output"),
    ("vision_feature_layer", 7, "7 is out of range for a vision tower with 2 layers"),
    ("projector_type", "conv", "Unknown projector type: 'conv'"),
    ("tag_mode", "tagz", "got 'tagz'; use one of tags, captions, random, none"),
    ("num_tags", 0, "must be in 1..64, got 0"),
    ("tag_encoder_heads", 5, "5 heads do not divide the vision width 32"),
])
def test_bad_config(model, field, value, match):
    cfg = model.config.to_dict() | {field: value}
    with pytest.raises(ConfigError, match=match):
        TunaConfig(**cfg)


def test_build_refuses_feature_layer_zero(parts):
    from tuna.model import build_tuna

    with pytest.raises(ConfigError, match="vision_feature_layer: 0 is the embedding output"):
        build_tuna(parts[0], parts[1], vision_feature_layer=0)


def test_position_ids_belong_to_the_merged_sequence(model):
    batch = make_batch(model)
    _raises(model, "position_ids were given with pixel_values", **batch, position_ids=torch.arange(10)[None])
