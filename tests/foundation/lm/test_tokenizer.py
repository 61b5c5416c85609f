"""The LM tokenizer: byte-level BPE trained on the world's training-side text, saved and reloaded by AutoTokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from support import World
from tuna.foundation.lm.pretrain import CORPUS_FILES, CORPUS_SOURCES, load_corpus
from tuna.foundation.lm.tokenizer import (
    BOS,
    EOS,
    PAD,
    UNK,
    VICUNA_SYSTEM,
    ensure_pad_and_template,
    tokens_per_name,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def saved(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedTokenizerFast, object]:
    """(trained tokenizer, the same reloaded with AutoTokenizer from save_pretrained)."""
    corpus = load_corpus([world.root / f for f in CORPUS_FILES], 0.05, 0)
    tok = train_tokenizer(corpus.tokenizer_texts(), 1024, 512)
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    return tok, AutoTokenizer.from_pretrained(folder)


def test_reloaded_tokenizer_has_the_special_tokens_and_settings(saved: tuple) -> None:
    tok, again = saved
    assert isinstance(again, PreTrainedTokenizerFast)
    assert (again.unk_token, again.bos_token, again.eos_token, again.pad_token) == (UNK, BOS, EOS, PAD)
    assert (again.unk_token_id, again.bos_token_id, again.eos_token_id, again.pad_token_id) == (0, 1, 2, 3)
    assert len(again) == len(tok) <= 1024
    assert again.model_max_length == 512 and again.padding_side == "right"


def test_class_names_round_trip_exactly_and_are_few_tokens(saved: tuple, world: World) -> None:
    tok, again = saved
    names = sorted(world.a_names | world.b_names)
    for name in names:
        for text in (name, f"Q: What is a {name}? A: a {name}, a kind of thing."):
            ids = again.encode(text, add_special_tokens=False)
            assert ids == tok.encode(text, add_special_tokens=False)
            assert again.decode(ids) == text
        # The same tokens at the start of a text and inside a sentence (a tag and an answer agree).
        assert again.encode(name, add_special_tokens=False) == again.encode(f"a {name}", add_special_tokens=False)[1:]
    for split in (world.id_names, world.ood_names, world.b_names):
        stats = tokens_per_name(again, sorted(split))
        assert stats["n"] == len(split) and stats["mean"] <= 2.0, stats


def test_encode_prepends_bos_and_nothing_is_unknown(saved: tuple) -> None:
    _, again = saved
    text = "naïve café — 日本 ✓ <image>\n\ttabs"
    ids = again(text)["input_ids"]
    assert ids[0] == again.bos_token_id and again.unk_token_id not in ids
    assert again.decode(ids, skip_special_tokens=True) == text


def test_batches_pad_on_the_right_with_pad(saved: tuple) -> None:
    _, again = saved
    batch = again(["a zedul", "a much longer text than the first one"], padding=True)
    assert batch["input_ids"][0][-1] == again.pad_token_id and batch["attention_mask"][0][-1] == 0


def test_chat_template_is_vicuna_v1(saved: tuple) -> None:
    _, again = saved
    text = again.apply_chat_template([{"role": "user", "content": "<image>\nWhat is it?"},
                                      {"role": "assistant", "content": "A zedul."},
                                      {"role": "user", "content": "Colour?"}], tokenize=False, add_generation_prompt=True)
    assert text == f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A zedul.</s>USER: Colour? ASSISTANT:"


def test_ensure_pad_uses_unk_then_eos(saved: tuple, tmp_path: Path) -> None:
    tok, _ = saved
    tok.save_pretrained(tmp_path)
    no_pad = AutoTokenizer.from_pretrained(tmp_path, pad_token=None)
    no_pad.chat_template = None
    assert no_pad.pad_token is None
    ensure_pad_and_template(no_pad)
    assert no_pad.pad_token == UNK and no_pad.chat_template
    no_unk = AutoTokenizer.from_pretrained(tmp_path, pad_token=None, unk_token=None)
    assert ensure_pad_and_template(no_unk).pad_token == EOS


def test_tokenizer_reads_no_eval_file() -> None:
    assert not any(f.startswith("eval") for f in CORPUS_FILES)
    assert not any(name.startswith(("pope", "finer", "mme", "captions")) for name in CORPUS_SOURCES)
