"""TUNA forward: shapes, the LLaVA equivalence of tag_mode none, tuner weights, label masking, gradients, save/load, generate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaConfig, LlavaForConditionalGeneration

from tuna.model import IGNORE_INDEX, TunaForConditionalGeneration, set_trainable
from tuna_tiny import LM_VOCAB, K, T, make_batch

P = 16  # (32 px / 8 px)**2 patches, CLS dropped
D = 32


def _llava_from_parts(model: TunaForConditionalGeneration) -> LlavaForConditionalGeneration:
    """A plain Llava built from its own config, loaded by name from TUNA's CLIP vision tower, projector and LM."""
    cfg = model.config
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=cfg.clip_config.vision_config.to_dict(), text_config=cfg.text_config.to_dict(),
        image_token_index=cfg.image_token_index, image_seq_length=P, vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=cfg.text_config.tie_word_embeddings))
    state = {f"model.vision_tower.{n}": t for n, t in model.clip.vision_model.state_dict().items()}
    state |= {f"model.multi_modal_projector.{n}": t for n, t in model.projector.state_dict().items()}  # linear_1, linear_2
    state |= {f"model.language_model.{n}": t for n, t in model.language_model.model.state_dict().items()}
    state["lm_head.weight"] = model.language_model.lm_head.weight
    missing, unexpected = llava.load_state_dict(state, strict=False)
    assert not unexpected and not missing
    return llava.eval()


def test_shapes(make_model):
    model = make_model()
    batch = make_batch(model)
    with torch.no_grad():
        out = model(**batch)
    merged = 10 - 1 + P + K * (1 + T)
    assert out.logits.shape == (2, merged, LM_VOCAB)
    assert out.tag_weights.shape == (2, K)
    assert out.image_hidden_states.shape == (2, P, D)
    assert out.tag_hidden_states.shape == (2, K, D)
    assert out.attention_mask.shape == (2, merged)
    # row 0, tag 1 has 2 padding slots; row 1, tag 2 is absent (its visual-tag slot and T word slots)
    assert out.attention_mask.sum(-1).tolist() == [merged - 2, merged - (1 + T)]


def test_linear_projector_shapes(make_model):
    model = make_model(projector="linear")
    with torch.no_grad():
        out = model(**make_batch(model))
    assert out.image_hidden_states.shape == (2, P, D)
    assert not hasattr(model.projector, "linear_2")


@pytest.mark.parametrize("layer", [-2, -1])
def test_tag_mode_none_equals_plain_llava(make_model, layer):
    model = make_model(tag_mode="none", image_token_index=LM_VOCAB - 1, vision_feature_layer=layer)
    batch = make_batch(model)
    llava = _llava_from_parts(model)
    ids = batch["input_ids"]
    llava_ids = torch.cat([ids[:, :3], torch.full((2, P), LM_VOCAB - 1), ids[:, 4:]], dim=1)  # <image> repeated P times
    with torch.no_grad():
        ours = model(**batch)              # tag inputs are ignored in tag_mode none
        plain = model(input_ids=ids, pixel_values=batch["pixel_values"])
        ref = llava(input_ids=llava_ids, pixel_values=batch["pixel_values"])
    assert ours.logits.shape == ref.logits.shape == (2, 10 - 1 + P, LM_VOCAB)
    torch.testing.assert_close(ours.logits, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.logits, ours.logits, atol=0, rtol=0)
    assert ours.tag_weights is None and ours.tag_hidden_states is None


def test_random_and_captions_modes_share_the_tags_forward(make_model):
    outs = []
    for mode in ("tags", "random", "captions"):
        model = make_model(tag_mode=mode)
        with torch.no_grad():
            outs.append(model(**make_batch(model)).logits)
    torch.testing.assert_close(outs[1], outs[0], atol=0, rtol=0)
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)


def test_tuner_weights_are_a_softmax_per_image(make_model):
    model = make_model()
    batch = make_batch(model)
    with torch.no_grad():
        out = model(**batch)
        w = out.tag_weights
        assert torch.allclose(w.sum(-1), torch.ones(2))
        assert w[1, K - 1] == 0 and (w[batch["tag_mask"]] > 0).all()
        # = softmax(scale * cosine(CLIP text feature, CLIP image feature)) over the valid tags
        clip = model.clip
        text = clip.get_text_features(input_ids=batch["tag_clip_input_ids"].flatten(0, 1)).pooler_output.view(2, K, -1)
        image = clip.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        cos = torch.einsum("bkd,bd->bk", F.normalize(text, dim=-1), F.normalize(image, dim=-1))
        logits = (model.tuner.logit_scale.exp() * cos).masked_fill(~batch["tag_mask"], float("-inf"))
        torch.testing.assert_close(w, logits.softmax(-1), atol=1e-6, rtol=0)
        # precomputed CLIP text features give the same forward as CLIP-tokenised tags
        pre = {k: v for k, v in batch.items() if k != "tag_clip_input_ids"}
        out_pre = model(**pre, tag_features=text)
        torch.testing.assert_close(out_pre.logits, out.logits, atol=1e-5, rtol=0)
        # an absent tag's content changes nothing
        changed = {k: v.clone() for k, v in batch.items()}
        changed["tag_input_ids"][1, K - 1] = 5
        changed["tag_clip_input_ids"][1, K - 1, 1:-1] = 7
        out2 = model(**changed)
    torch.testing.assert_close(out2.tag_weights, w, atol=0, rtol=0)
    torch.testing.assert_close(out2.logits, out.logits, atol=0, rtol=0)


def test_weights_scale_each_tags_embeddings(make_model):
    model = make_model()
    batch = make_batch(model)
    with torch.no_grad():
        merged = model.prepare_multimodal_inputs(**batch)
        block = merged.inputs_embeds[:, 3 + P: 3 + P + K * (1 + T)].view(2, K, 1 + T, D)
        words = model.get_input_embeddings()(batch["tag_input_ids"])                   # (B, k, T, D)
        n_valid = batch["tag_mask"].sum(-1, keepdim=True)
        scale = (merged.tag_weights * n_valid)[..., None, None]                         # "mean" norm: weight * n_valid
        real = (batch["tag_attention_mask"].bool() & batch["tag_mask"][..., None])[..., None]
        torch.testing.assert_close(block[:, :, 1:], words * scale * real, atol=1e-6, rtol=0)
        torch.testing.assert_close(block[:, :, 0], merged.tag_hidden_states * scale[..., 0], atol=1e-6, rtol=0)


def test_uniform_weights_when_tuner_off(make_model):
    model = make_model(tuner=False)
    with torch.no_grad():
        w = model(**make_batch(model)).tag_weights
    torch.testing.assert_close(w, torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]))


def test_padding_slots_change_nothing(make_model):
    """Tags of <= 2 tokens padded to T=4 slots give the same predictions as the same tags in 2 slots."""
    model = make_model()
    batch = make_batch(model)
    batch["tag_attention_mask"][..., 2:] = 0
    short = dict(batch, tag_input_ids=batch["tag_input_ids"][..., :2], tag_attention_mask=batch["tag_attention_mask"][..., :2])
    with torch.no_grad():
        long_out, short_out = model(**batch), model(**short)
    after = 10 - 3 - 1   # text tokens after <image>
    torch.testing.assert_close(long_out.logits[:, -after:], short_out.logits[:, -after:], atol=1e-5, rtol=0)


def test_label_masking_and_loss(make_model):
    model = make_model()
    batch = make_batch(model)
    labels = batch["input_ids"].clone()
    labels[:, :4] = IGNORE_INDEX                         # prompt up to and including <image>
    out = model(**batch, labels=labels)
    block = P + K * (1 + T)
    assert (out.labels[:, 3:3 + block] == IGNORE_INDEX).all()
    assert torch.equal(out.labels[:, 3 + block:], labels[:, 4:])
    assert torch.equal(out.labels[:, :3], labels[:, :3])
    shift_logits, shift_labels = out.logits[:, :-1].flatten(0, 1), out.labels[:, 1:].flatten()
    expected = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["tuna", "baseline"])
def test_loss_only_is_the_same_loss_and_gradients_from_the_labelled_positions(make_model, variant: str):
    """Training's ``loss_only``: the LM head at the labelled positions alone gives the full forward's loss and
    gradients; an LM without a plain head keeps the full forward."""
    from tuna.model.label_loss import label_position_loss

    model = make_model() if variant == "tuna" else make_model(tag_mode="none")
    set_trainable(model.train(), stage=2)
    batch = make_batch(model)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] < 0, IGNORE_INDEX)
    labels[0, :6] = IGNORE_INDEX                          # rows with different labelled spans
    params = [p for p in model.parameters() if p.requires_grad]
    runs = []
    for loss_only in (False, True):
        model.zero_grad()
        out = model(**batch, labels=labels, loss_only=loss_only)
        out.loss.backward()
        runs.append((out.loss.detach(), [p.grad.clone() for p in params], out.logits))
    (full, full_grads, logits), (fast, fast_grads, none) = runs
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=0)
    for a, b in zip(full_grads, fast_grads):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert logits is not None and none is None
    assert label_position_loss(torch.nn.Linear(2, 2), torch.zeros(1, 2, 2), None, None, labels[:, :2]) is None


def test_gradients_reach_trained_parts_not_frozen_towers(make_model):
    model = make_model().train()
    set_trainable(model, stage=2)
    batch = make_batch(model)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] < 0, IGNORE_INDEX)
    model(**batch, labels=labels).loss.backward()

    def reached(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    for part in (model.projector, model.tag_encoder, model.tuner, model.language_model.model.layers):
        assert reached(part), part
    assert all(p.grad is None and not p.requires_grad for p in model.clip.parameters())
    assert model.get_input_embeddings().weight.grad is None     # word embeddings frozen by default in stage 2


def test_save_and_load_round_trip(make_model, tmp_path):
    model = make_model(tag_weight_norm="sum", tuner=True)
    with torch.no_grad():
        model.tuner.logit_scale.fill_(1.5)
    model.save_pretrained(tmp_path)
    loaded = TunaForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = make_batch(model)
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    torch.testing.assert_close(b.logits, a.logits, atol=0, rtol=0)
    torch.testing.assert_close(b.tag_weights, a.tag_weights, atol=0, rtol=0)
    cfg = loaded.config
    assert (cfg.num_tags, cfg.max_tag_tokens, cfg.tag_weight_norm, cfg.projector_type) == (K, T, "sum", "mlp2x_gelu")
    assert not any(p.requires_grad for p in loaded.clip.parameters())


def test_greedy_generate_runs_and_is_deterministic(make_model):
    model = make_model()
    batch = make_batch(model)
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    first, again = model.generate(**batch, **kw), model.generate(**batch, **kw)
    assert first.shape[0] == 2 and 1 <= first.shape[1] <= 4
    assert torch.equal(first, again)
    with torch.no_grad():
        step0 = model(**batch).logits[:, -1].argmax(-1)
    assert torch.equal(first[:, 0], step0)


def test_generate_left_padded_batch_matches_single_rows(make_model):
    model = make_model()
    batch = make_batch(model)
    ids = batch["input_ids"].clone()
    prompt = torch.cat([torch.tensor([7, model.config.image_token_index]), ids[1, 4:]])  # 8 tokens, one <image>
    ids[1] = torch.cat([torch.zeros(2, dtype=ids.dtype), prompt])                       # row 1: two left pads
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    kw = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    both = model.generate(**dict(batch, input_ids=ids), attention_mask=mask, **kw)
    single = {k: v[1:] for k, v in batch.items()}
    alone = model.generate(**dict(single, input_ids=ids[1:, 2:]), **kw)
    assert torch.equal(both[1], alone[0])


@pytest.mark.parametrize("tag_mode, settings", [("tags", {}), ("none", {}),
                                                ("tags", {"tuner_order": True, "tuner_rank_prior": 0.05}),
                                                ("tags", {"tag_position": "before"})])
def test_prompt_encoder_alone_merges_exactly_as_the_model(make_model, tmp_path, tag_mode, settings):
    """What serving's retrieval step loads: the model minus the LM's layers, saved and loaded on its own."""
    from safetensors import safe_open

    from tuna.model import TunaPromptEncoder
    from tuna.model.modeling_tuna import PROMPT_ENCODER_WEIGHTS

    model = make_model(tag_mode=tag_mode, **settings)
    TunaPromptEncoder.from_model(model).save_pretrained(tmp_path)
    with safe_open(str(tmp_path / PROMPT_ENCODER_WEIGHTS), "pt") as f:
        keys = set(f.keys())
    assert "embed_tokens.weight" in keys and not any(k.startswith("language_model.") for k in keys)
    encoder = TunaPromptEncoder.from_pretrained(tmp_path)
    assert encoder.get_input_embeddings().weight.shape == (LM_VOCAB, 32) and not encoder.training
    batch = make_batch(model)
    with torch.no_grad():
        ours = encoder.prepare_multimodal_inputs(batch.pop("input_ids"), batch.pop("pixel_values"), **batch)
        batch = make_batch(model)
        ref = model.prepare_multimodal_inputs(batch.pop("input_ids"), batch.pop("pixel_values"), **batch)
    assert torch.equal(ours.inputs_embeds, ref.inputs_embeds) and torch.equal(ours.attention_mask, ref.attention_mask)
    assert (ours.tag_weights is None) == (tag_mode == "none")
    if ref.tag_weights is not None:
        assert torch.equal(ours.tag_weights, ref.tag_weights)


@pytest.mark.parametrize("pool, strategy, tokens", [(1, "full", P + 1), (2, "default", P // 4), (2, "full", P // 4 + 1),
                                                    (4, "full", 2)])
def test_pooled_grid_and_cls_are_the_visual_tokens(make_model, pool, strategy, tokens):
    """vision_feature_pool averages factor x factor cells of the patch grid (raster order); "full" puts CLS first."""
    model = make_model(vision_feature_pool=pool, vision_feature_select_strategy=strategy)
    assert model.config.num_patches == tokens
    pixels = make_batch(model)["pixel_values"]
    with torch.no_grad():
        patches, _ = model.encode_image(pixels)
        hidden = model.clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    grid = hidden[:, 1:].reshape(2, 4, 4, D)                                       # 4x4 grid of 8 px patches
    want = grid.reshape(2, 4 // pool, pool, 4 // pool, pool, D).mean((2, 4)).reshape(2, -1, D)
    if strategy == "full":
        want = torch.cat([hidden[:, :1], want], dim=1)
    torch.testing.assert_close(patches, want)
    with torch.no_grad():
        out = model(**make_batch(model))
    assert out.image_hidden_states.shape == (2, tokens, D)


def test_pool_must_divide_the_grid(make_model):
    from tuna.errors import ConfigError

    with pytest.raises(ConfigError, match="vision_feature_pool: 3 must be a positive divisor of the 4x4 patch grid side"):
        make_model(vision_feature_pool=3)


def test_gradient_checkpointing_gives_the_same_gradients(make_model) -> None:
    """train.gradient_checkpointing (issue 16): activations recomputed in backward, the same loss and gradients."""
    from tuna.train.engine import TrainError, enable_gradient_checkpointing

    grads = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert model.language_model.model.gradient_checkpointing
        batch = make_batch(model)
        out = model(**batch, labels=batch["input_ids"].clone())
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, g0), (loss1, g1) = grads
    torch.testing.assert_close(loss0, loss1)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], rtol=1e-5, atol=1e-6, msg=name)

    model = make_model()
    type(model.language_model).supports_gradient_checkpointing, old = False, type(model.language_model).supports_gradient_checkpointing
    try:
        with pytest.raises(TrainError) as err:
            enable_gradient_checkpointing(model)
    finally:
        type(model.language_model).supports_gradient_checkpointing = old
    assert str(err.value).startswith("train.gradient_checkpointing: the language model (")
    assert "does not support gradient checkpointing; set train.gradient_checkpointing=false" in str(err.value)


def test_images_encoded_once_by_the_caller_give_the_same_merge(make_model):
    """Serving's retrieval step encodes the images to retrieve tags and passes that encoding on (image_outputs): the
    merge is the one prepare_multimodal_inputs computes itself; an encoding of another batch size is refused."""
    from tuna.model.modeling_tuna import ModelInputError

    model = make_model()
    batch = make_batch(model)
    with torch.no_grad():
        ref = model.prepare_multimodal_inputs(**batch)
        encoded = model.encode_image(batch["pixel_values"])
        ours = model.prepare_multimodal_inputs(**batch, image_outputs=encoded)
        assert torch.equal(ours.inputs_embeds, ref.inputs_embeds) and torch.equal(ours.tag_weights, ref.tag_weights)
        with pytest.raises(ModelInputError, match=r"image_outputs hold 1 images but input_ids has 2 rows"):
            model.prepare_multimodal_inputs(**batch, image_outputs=(encoded[0][:1], encoded[1][:1]))


def test_a_forward_on_cached_image_outputs_equals_one_on_pixels(make_model):
    """Training with train.cache_vision feeds forward the frozen tower's outputs instead of pixels: same loss and
    logits, no pixels needed; neither given is a one-line error."""
    from tuna.model.modeling_tuna import ModelInputError

    model = make_model()
    batch = make_batch(model)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] < 0, -100)
    with torch.no_grad():
        ref = model(**batch, labels=labels)
        pixels = batch.pop("pixel_values")
        ours = model(**batch, labels=labels, image_outputs=model.encode_image(pixels))
        assert torch.equal(ours.logits, ref.logits) and torch.equal(ours.loss, ref.loss)
        with pytest.raises(ModelInputError, match=r"pass pixel_values \(B, 3, S, S\) or image_outputs"):
            model.prepare_multimodal_inputs(pixel_values=None, **batch)


def test_crop_grid_windows_overlap_by_half_a_crop() -> None:
    """vision_crops n: n x n crops of side 2S/(n+1) at a stride of S/(n+1), raster order, resized to S x S."""
    from tuna.model.vision_features import crop_grid

    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    crops = crop_grid(x, 3)                                                        # side 16, stride 8
    assert crops.shape == (2 * 9, 3, 32, 32)
    for i, (y0, x0) in enumerate((y, x) for y in (0, 8, 16) for x in (0, 8, 16)):
        want = F.interpolate(x[1:2, :, y0:y0 + 16, x0:x0 + 16], size=(32, 32), mode="bicubic", align_corners=False)
        torch.testing.assert_close(crops[9 + i:10 + i], want)
    assert torch.equal(crop_grid(x, 1), x)                                         # one crop: the image itself


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize(("shape", "to"), [((5, 3, 48, 48), (96, 96)), ((2, 3, 31, 40), (96, 64)), ((2, 3, 96, 96), (48, 48))])
def test_resize_is_f_interpolate_as_matrix_products(shape, to, mode) -> None:
    from tuna.model.vision_features import resize

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=to, mode=mode, align_corners=False)
    torch.testing.assert_close(resize(x, *to, mode), want, rtol=0, atol=2e-6)
    assert resize(x.bfloat16(), *to, mode).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"images must be \(N, C, height, width\), got shape \(3, \d+, \d+\)"):
        resize(x[0], *to, mode)


def test_crop_tokens_follow_the_grid(make_model):
    """Each crop adds its CLS (from vision_feature_layer) after the image's own tokens; crops=False leaves them out."""
    from tuna.model.vision_features import crop_grid

    model = make_model(vision_crops=2, vision_feature_select_strategy="full")
    assert model.config.num_patches == P + 1 + 4
    pixels = make_batch(model)["pixel_values"]
    with torch.no_grad():
        patches, image_features = model.encode_image(pixels)
        alone, same_features = model.encode_image(pixels, crops=False)
        right_bottom = F.interpolate(pixels[:, :, 10:30, 10:30], size=(32, 32), mode="bicubic", align_corners=False)
        hidden = model.clip.vision_model(pixel_values=right_bottom, output_hidden_states=True).hidden_states[-2]
        out = model(**make_batch(model))
    assert patches.shape == (2, P + 1 + 4, D) and alone.shape == (2, P + 1, D)
    torch.testing.assert_close(patches[:, :P + 1], alone)
    torch.testing.assert_close(image_features, same_features)
    assert crop_grid(pixels, 2).shape[-1] == 32
    torch.testing.assert_close(patches[:, -1], hidden[:, 0], atol=1e-5, rtol=1e-4)  # crop 4: stride 32 // 3, side 20
    assert out.image_hidden_states.shape == (2, P + 1 + 4, D)


def test_views_ride_the_same_vision_pass(make_model):
    """encode_image_and_views: the image's tokens and feature as encode_image gives them, and each view's image
    feature as if it were encoded alone (the served region cells)."""
    from tuna.model.modeling_tuna import ModelInputError

    model = make_model(vision_crops=2, vision_feature_select_strategy="full")
    pixels = make_batch(model)["pixel_values"]
    views = torch.randn(5, *pixels.shape[1:])
    with torch.no_grad():
        patches, image_features, view_features = model.encode_image_and_views(pixels, views)
        want_patches, want_features = model.encode_image(pixels)
        _, alone = model.encode_image(views, crops=False)
        assert model.encode_image_and_views(pixels, None)[2] is None
    torch.testing.assert_close(patches, want_patches, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image_features, want_features, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(view_features, alone, atol=1e-5, rtol=1e-4)
    with pytest.raises(ModelInputError, match=r"views has shape \(5, 3, 16, 16\)"):
        model.encode_image_and_views(pixels, views[:, :, :16, :16])


def test_vision_crops_out_of_range_is_refused(make_model):
    from tuna.errors import ConfigError

    with pytest.raises(ConfigError, match="vision_crops: 5 must be 0 .no crops. or a crop grid side in 1..4"):
        make_model(vision_crops=5)
