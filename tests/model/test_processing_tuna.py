"""The model's processing: the LLaVA templates and prompt ids (exact tokens), tag tensors and padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from support import llava_record as _conv
from support import word_tokenizer
from tuna.model.configuration_tuna import IMAGE_TOKEN_INDEX
from tuna.model.processing_tuna import (
    CLIP_TAG_TOKENS,
    IGNORE_INDEX,
    ProcessingError,
    TunaProcessor,
    conversation_prompt_ids,
    prompt_ids,
    tokenize_conversation,
    tokenize_plain,
)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return word_tokenizer()


def test_plain_template_masks_everything_but_the_caption(tok: PreTrainedTokenizerFast) -> None:
    ids, labels = tokenize_plain(_conv("<image>\nwhat is it?", "a red zedul"), tok)
    assert ids[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert tok.convert_ids_to_tokens([t for t in labels if t != IGNORE_INDEX]) == ["a", "red", "zedul", "</s>"]
    assert ids[2:] == labels[2:]


def test_conversation_masks_human_turns_and_keeps_every_answer(tok: PreTrainedTokenizerFast) -> None:
    rec = _conv("<image>\nwhat is it?", "a zedul", "how many?", "2")
    ids, labels = tokenize_conversation(rec, tok, "chat")
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and len(ids) == len(labels)
    answers = [t for t in labels if t != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(answers) == ["a", "zedul", "</s>", "2", "</s>"]
    # every label position is either masked or equal to the input id (a causal LM shifts inside)
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(labels, ids))
    # the generation prompt is exactly the training prefix of the first answer
    first_answer = labels.index(next(t for t in labels if t != IGNORE_INDEX))
    assert prompt_ids(tok, "chat", "<image>\nwhat is it?") == ids[:first_answer]


def test_multi_turn_prompt_is_the_training_prefix_of_the_next_answer(tok: PreTrainedTokenizerFast) -> None:
    rec = _conv("<image>\nwhat is it?", "a zedul", "how many?", "2")
    ids, labels = tokenize_conversation(rec, tok, "chat")
    second = len(ids) - 2  # the last answer is "2" + </s>
    assert conversation_prompt_ids(tok, "chat", [("<image>\nwhat is it?", "a zedul")], "how many?") == ids[:second]
    assert conversation_prompt_ids(tok, "chat", [("what is it?", "a zedul")], "how many?") == ids[:second]


def test_templates_give_the_tokens_they_gave_in_train_data(tok: PreTrainedTokenizerFast) -> None:
    """Pinned ids (what tuna.train.data produced before the templates moved here): the move changed no token."""
    rec = _conv("<image>\nwhat is it?", "a red zedul", "how many?", "2")
    assert tokenize_plain(rec, tok) == ([1, -200, 11, 13, 12, 2], [-100, -100, 11, 13, 12, 2])
    assert tokenize_conversation(rec, tok, "chat") == (
        [1, 20, 4, 5, -200, 7, 8, 9, 10, 6, 5, 11, 13, 12, 2, 4, 5, 17, 18, 10, 6, 5, 15, 2],
        [-100] * 11 + [11, 13, 12, 2] + [-100] * 7 + [15, 2])
    assert conversation_prompt_ids(tok, "chat", [("what is it?", "a zedul")], "how many?") == \
        [1, 20, 4, 5, -200, 7, 8, 9, 10, 6, 5, 11, 12, 2, 4, 5, 17, 18, 10, 6, 5]
    assert prompt_ids(tok, "", "what is it?") == [1, 4, 5, -200, 7, 8, 9, 10, 6, 5]


def test_an_image_in_an_answer_is_refused_naming_the_sample(tok: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ProcessingError, match="sample 1: an assistant turn holds <image>"):
        tokenize_conversation(_conv("what is it?", "a <image> zedul"), tok, "chat")


def test_tag_tensors_pad_to_k_tags_and_cut_long_tags(tok: PreTrainedTokenizerFast) -> None:
    proc = TunaProcessor(tok, None, tok, num_tags=3, max_tag_tokens=2, use_tags=True)
    t = proc.tag_tensors([["zedul", "red zedul", "what is it", "extra"], ["red"]])
    assert t["tag_input_ids"].shape == (2, 3, 2) and t["tag_clip_input_ids"].shape == (2, 3, CLIP_TAG_TOKENS)
    assert t["tag_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert t["tag_attention_mask"][0].sum(-1).tolist() == [1, 2, 2]          # "what is it" cut to 2 LM tokens
    assert tok.convert_ids_to_tokens(t["tag_input_ids"][0, 1].tolist()) == ["red", "zedul"]
    assert t["tag_clip_attention_mask"][1, 1:].sum() == 0                     # absent tags: empty CLIP text


def test_padding_right_for_batches_left_for_generation(tok: PreTrainedTokenizerFast) -> None:
    proc = TunaProcessor(tok, None, None, num_tags=1, max_tag_tokens=1, use_tags=False)
    ids, mask = proc.pad_right([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, 3, 3]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = proc.pad_left([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [3, 3, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    batch = proc.collate([[5, 6, 7], [8]], [[-100, 6, 7], [8]], torch.zeros(2, 3, 4, 4), [[], []])
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]] and "tag_input_ids" not in batch


def test_processor_refuses_what_it_cannot_build(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    with pytest.raises(ProcessingError, match="no CLIP tokenizer"):
        TunaProcessor(tok, None, None, num_tags=3, max_tag_tokens=2, use_tags=True)
    with pytest.raises(ProcessingError, match="images=False"):
        TunaProcessor(tok, None, None, num_tags=3, max_tag_tokens=2, use_tags=False).pixel_values([])
    tok.save_pretrained(str(tmp_path))      # no config.json: a text (and image) processor, without tags
    proc = TunaProcessor.from_pretrained(tmp_path, images=False)
    assert not proc.use_tags and proc.pad == tok.pad_token_id
