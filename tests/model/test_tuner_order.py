"""The tuner's rank prior and tag order: weights that also trust the retrieval order, and tag blocks the LM reads
heaviest first."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuna.errors import ConfigError
from tuna_tiny import K, T, make_batch

P = 16  # visual tokens of the tiny tower (CLS dropped)


def _cosine(model, batch) -> torch.Tensor:
    clip = model.clip
    text = clip.get_text_features(input_ids=batch["tag_clip_input_ids"].flatten(0, 1)).pooler_output.view(2, K, -1)
    image = clip.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    return torch.einsum("bkd,bd->bk", F.normalize(text, dim=-1), F.normalize(image, dim=-1))


def test_rank_prior_takes_cosine_off_per_retrieval_rank(make_model):
    model = make_model(tuner_rank_prior=0.05)
    batch = make_batch(model)
    with torch.no_grad():
        w = model(**batch).tag_weights
        cos = _cosine(model, batch) - 0.05 * torch.arange(K)
        logits = (model.tuner.logit_scale.exp() * cos).masked_fill(~batch["tag_mask"], float("-inf"))
    torch.testing.assert_close(w, logits.softmax(-1), atol=1e-6, rtol=0)
    with torch.no_grad():
        plain = make_model()(**batch).tag_weights
    assert not torch.allclose(w, plain)
    assert (w[:, 0] > plain[:, 0]).all()   # the first-retrieved tag gains from the prior


def _tag_block(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    merged = model.prepare_multimodal_inputs(**batch)
    start = 3 + P
    block = merged.inputs_embeds[:, start: start + K * (1 + T)].view(2, K, 1 + T, -1)
    mask = merged.attention_mask[:, start: start + K * (1 + T)].view(2, K, 1 + T)
    return block, mask, merged.tag_weights


def _permute(batch: dict, order: torch.Tensor) -> dict:
    out = dict(batch)
    for key in ("tag_input_ids", "tag_attention_mask", "tag_clip_input_ids", "tag_mask"):
        v = batch[key]
        idx = order.view(*order.shape, *([1] * (v.dim() - 2))).expand(*order.shape, *v.shape[2:])
        out[key] = v.gather(1, idx)
    return out


def test_tuner_order_is_the_retrieval_order_sorted_by_weight(make_model):
    """The LM reads exactly what it would read had the tags been retrieved heaviest first; the weights returned
    for provenance stay in the retrieval order; an absent tag stays last."""
    ordered, plain = make_model(tuner_order=True), make_model()
    batch = make_batch(ordered)
    with torch.no_grad():
        block, mask, weights = _tag_block(ordered, batch)
        _, _, plain_weights = _tag_block(plain, batch)
        order = torch.sort(weights.masked_fill(~batch["tag_mask"], -1.0), dim=-1, descending=True, stable=True).indices
        assert not torch.equal(order, torch.arange(K).expand(2, K))   # the batch really gets reordered
        assert order[1, -1] == K - 1                                   # row 1's absent tag stays last
        sorted_block, sorted_mask, _ = _tag_block(plain, _permute(batch, order))
        torch.testing.assert_close(weights, plain_weights, atol=0, rtol=0)
        torch.testing.assert_close(block, sorted_block, atol=1e-6, rtol=0)
        assert torch.equal(mask, sorted_mask)
        torch.testing.assert_close(ordered(**batch).logits, plain(**_permute(batch, order)).logits, atol=1e-5, rtol=0)


def test_tuner_order_is_ignored_with_the_tuner_off(make_model):
    off, off_ordered = make_model(tuner=False), make_model(tuner=False, tuner_order=True)
    batch = make_batch(off)
    with torch.no_grad():
        torch.testing.assert_close(off_ordered(**batch).logits, off(**batch).logits, atol=0, rtol=0)


def test_the_order_and_prior_survive_save_and_load(make_model, tmp_path):
    model = make_model(tuner_order=True, tuner_rank_prior=0.02)
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    assert (again.config.tuner_order, again.config.tuner_rank_prior) == (True, 0.02)
    batch = make_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_a_rank_prior_outside_0_to_1_is_refused(make_model, bad):
    with pytest.raises(ConfigError, match="tuner_rank_prior"):
        make_model(tuner_rank_prior=bad)
