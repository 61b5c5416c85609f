"""build_tuna by path, trainable groups per stage, export of the baseline to LlavaForConditionalGeneration."""

from __future__ import annotations

import pytest
import torch

from tuna.model import (
    ModelLoadError,
    build_tuna,
    set_trainable,
    stage_parameters,
    to_llava,
)
from tuna_tiny import LM_VOCAB, make_batch, tiny_lm


def test_build_from_saved_checkpoints(parts, tmp_path):
    clip, lm = parts
    clip.save_pretrained(tmp_path / "encoder")
    lm.save_pretrained(tmp_path / "lm")
    model = build_tuna(str(tmp_path / "encoder"), tmp_path / "lm", projector="linear", num_tags=2, tuner=False)
    for name, tensor in clip.state_dict().items():  # 0-d logit_scale is held as shape (1,) for DeepSpeed
        assert torch.equal(model.clip.state_dict()[name].reshape(tensor.shape), tensor), name
    for name, tensor in lm.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in model.clip.parameters())
    cfg = model.config
    assert (cfg.projector_type, cfg.num_tags, cfg.use_tuner, cfg.vision_feature_layer) == ("linear", 2, False, -2)
    assert cfg.text_config._attn_implementation == "sdpa"


def test_build_names_a_missing_checkpoint(parts, tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load the CLIP encoder from '.*nowhere'"):
        build_tuna(tmp_path / "nowhere", parts[1])


def _names(groups):
    return {g: set(params) for g, params in groups.items()}


def test_stage_groups(make_model):
    model = make_model()
    one = _names(stage_parameters(model, 1))
    assert set(one) == {"projector", "tag_encoder"}
    two = _names(stage_parameters(model, 2))
    assert set(two) == {"projector", "tag_encoder", "tuner", "language_model"}
    assert two["tuner"] == {"tuner.logit_scale"}
    # tied LM: the frozen word-embedding table is also the head, so neither trains by default
    assert "language_model.model.embed_tokens.weight" not in two["language_model"]
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in two["language_model"]
    with_embed = _names(stage_parameters(model, 2, train_word_embeddings=True))["language_model"]
    assert "language_model.model.embed_tokens.weight" in with_embed

    groups = set_trainable(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set().union(*_names(groups).values())
    assert all(n.startswith(("projector.", "tag_encoder.")) for n in trainable)
    with pytest.raises(ValueError, match="stage must be 1 or 2, got 3"):
        stage_parameters(model, 3)


def test_stage_groups_baseline_and_untied_head(parts):
    model = build_tuna(parts[0], tiny_lm(tie=False), tag_mode="none")
    two = _names(stage_parameters(model, 2))
    assert set(two) == {"projector", "language_model"}
    assert "language_model.lm_head.weight" in two["language_model"]
    assert "language_model.model.embed_tokens.weight" not in two["language_model"]
    no_tuner = build_tuna(parts[0], parts[1], tuner=False)
    assert set(stage_parameters(no_tuner, 2)) == {"projector", "tag_encoder", "language_model"}


def test_vision_tower_trains_only_when_asked_and_never_the_text_tower(parts):
    model = build_tuna(parts[0], parts[1], tag_mode="none")
    groups = set_trainable(model, 2, train_vision_tower=True)
    vision = set(groups["vision_tower"])
    assert vision and all(n.startswith("clip.vision_model.") for n in vision)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("clip.")} == vision      # not visual_projection, not the text tower
    set_trainable(model, 2)
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_to_llava_exports_the_baseline(make_model):
    model = make_model(tag_mode="none", image_token_index=LM_VOCAB - 1)
    llava = to_llava(model)
    batch = make_batch(model)
    ids = batch["input_ids"]
    llava_ids = torch.cat([ids[:, :3], torch.full((2, 16), LM_VOCAB - 1), ids[:, 4:]], dim=1)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=batch["pixel_values"]).logits
        ref = llava(input_ids=llava_ids, pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs tag_mode 'none'"):
        to_llava(make_model())
    with pytest.raises(ValueError, match="image_token_index must be in 0..99, got -200"):
        to_llava(make_model(tag_mode="none"))
