"""``tag_position``: the tag block after the visual tokens (TUNA's layout) or ahead of them."""

from __future__ import annotations

import pytest
import torch

from tuna.errors import ConfigError
from tuna_tiny import K, T, make_batch

P = 16  # visual tokens of the tiny tower (CLS dropped)
START = 3  # the `<image>` id's position in make_batch's prompts


def test_before_puts_the_same_tag_block_ahead_of_the_same_visual_tokens(make_model):
    after, before = make_model(), make_model(tag_position="before")
    batch = make_batch(after)
    with torch.no_grad():
        a, b = after.prepare_multimodal_inputs(**batch), before.prepare_multimodal_inputs(**batch)
    block = K * (1 + T)
    assert a.inputs_embeds.shape == b.inputs_embeds.shape
    torch.testing.assert_close(b.inputs_embeds[:, START:START + block], a.inputs_embeds[:, START + P:START + P + block], atol=0, rtol=0)
    torch.testing.assert_close(b.inputs_embeds[:, START + block:START + block + P], a.inputs_embeds[:, START:START + P], atol=0, rtol=0)
    assert torch.equal(b.attention_mask[:, START:START + block], a.attention_mask[:, START + P:START + P + block])
    torch.testing.assert_close(b.inputs_embeds[:, :START], a.inputs_embeds[:, :START], atol=0, rtol=0)       # the prompt around it
    torch.testing.assert_close(b.inputs_embeds[:, START + P + block:], a.inputs_embeds[:, START + P + block:], atol=0, rtol=0)
    assert torch.equal(b.labels, a.labels) if a.labels is not None else b.labels is None
    # the visual tokens sit next to the question: their positions end where the text resumes, as in a tagless model
    text_start = START + P + block
    assert (b.position_ids[:, START + block + P - 1] == b.position_ids[:, text_start] - 1).all()
    with torch.no_grad():
        assert not torch.allclose(before(**batch).logits[:, -1], after(**batch).logits[:, -1])


def test_the_baseline_has_no_tag_block_to_move(make_model):
    plain, moved = make_model(tag_mode="none"), make_model(tag_mode="none", tag_position="before")
    batch = make_batch(plain)
    with torch.no_grad():
        torch.testing.assert_close(moved(**batch).logits, plain(**batch).logits, atol=0, rtol=0)


def test_the_position_survives_save_and_load(make_model, tmp_path):
    model = make_model(tag_position="before")
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path).eval()
    assert again.config.tag_position == "before"
    batch = make_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)


def test_an_unknown_position_is_refused(make_model):
    with pytest.raises(ConfigError, match="tag_position"):
        make_model(tag_position="middle")
