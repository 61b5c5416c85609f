"""Chat tuning of the tiny LM: the loss reads the assistant turns only, the step trains them, the recipe checks it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lm_support import lm_config
from support import SMOKE, World, quiet
from tuna.errors import ConfigError, DataFormatError
from tuna.foundation.lm import load_lm, train_lm
from tuna.foundation.lm.chat_tune import ASSISTANT, USER, answer_labels, chat_tune, marker_ids
from tuna.foundation.lm.pretrain import encode_documents, scene_documents
from tuna.recipe import load_recipe

A, U = [7, 8], [5, 6]  # two-token markers, as a tokenizer without learnt chat markers splits them


def test_answer_labels_keep_every_assistant_turn_and_nothing_else() -> None:
    ids = [1, 5, 6, 20, 21, 7, 8, 30, 5, 6, 22, 7, 8, 31, 32, 2]
    want = [-100] * 7 + [30] + [-100] * 5 + [31, 32, 2]
    assert answer_labels(ids, A, U) == want
    assert answer_labels([1, 5, 6, 20, 2], A, U) == [-100] * 5, "no assistant turn: nothing to learn"
    assert answer_labels([1, 7, 8], A, U) == [-100] * 3, "an empty last turn"
    assert answer_labels([1, 7, 9, 8, 30, 2], A, U) == [-100] * 6, "a split marker is no marker"


def _answer_loss(model: Any, tok: Any, docs: list[list[int]]) -> float:
    """Mean loss on the answer tokens of ``docs`` (one by one)."""
    a, u = marker_ids(tok, ASSISTANT), marker_ids(tok, USER)
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([d]), labels=torch.tensor([answer_labels(d, a, u)])).loss.item()
                  for d in docs]
    return sum(losses) / len(losses)


def test_chat_tuning_learns_the_answers_and_is_deterministic(trained: dict[str, Any], world: World) -> None:
    taxonomy = json.loads((world.root / "taxonomy.json").read_text())
    runs = []
    for _ in range(2):
        model, tok = load_lm(trained["path"])
        docs = encode_documents(tok, scene_documents(taxonomy, 4, seed=0))
        held = encode_documents(tok, scene_documents(taxonomy, 1, seed=5))
        before = _answer_loss(model, tok, held)
        torch.manual_seed(0)
        report = chat_tune(model, tok, docs, encode_documents(tok, ["Q: What is a zedul? A: a berry."]), steps=30,
                           batch_size=8, lr=3e-3, text_share=0.25, max_tokens=64, warmup=0.1, seed=0, log=quiet)
        runs.append((report, [p.detach().clone() for p in model.parameters()], before, _answer_loss(model, tok, held)))
    (report, weights, before, after), (report2, weights2, _, _) = runs
    assert report["steps"] == 30 and report["text_per_batch"] == 2 and report["conversations"] == len(docs)
    assert after < before, f"held-out answer loss {before:.3f} -> {after:.3f}"
    assert report == {**report2, "train_seconds": report["train_seconds"]}
    assert all(torch.equal(x, y) for x, y in zip(weights, weights2))
    assert not model.training


def test_chat_tuning_refuses_conversations_without_answers(trained: dict[str, Any]) -> None:
    model, tok = load_lm(trained["path"])
    with pytest.raises(DataFormatError, match="no conversation with an assistant turn.*lm.chat_steps: 0"):
        chat_tune(model, tok, encode_documents(tok, ["just text"]), [], steps=1, batch_size=2, lr=1e-3,
                  text_share=0.0, max_tokens=64, warmup=0.0, seed=0, log=quiet)


def test_train_lm_with_chat_tuning_records_it(world: World, tmp_path: Path) -> None:
    cfg = lm_config(world, tmp_path, "lm.chat_steps=4", "lm.chat_batch_size=4")
    manifest = train_lm(cfg, progress=False, log=quiet)
    chat = manifest["chat_tuning"]
    assert chat["steps"] == 4 and chat["batch_size"] == 4 and chat["text_per_batch"] == 1
    assert manifest["train_seconds"] >= chat["train_seconds"]
    plain = train_lm(lm_config(world, tmp_path / "plain"), progress=False, log=quiet)
    assert plain["chat_tuning"] is None and plain["fingerprint"] != manifest["fingerprint"]


@pytest.mark.parametrize("overrides, key, hint", [
    (["lm.chat_steps=-1"], "lm.chat_steps", "0..1000000"),
    (["lm.chat_text_share=1"], "lm.chat_text_share", "[0, 1)"),
    (["lm.chat_lr=0"], "lm.chat_lr", "(0, 1)"),
    (["lm.scene_look_alike_share=1.5"], "lm.scene_look_alike_share", "[0, 1] or null"),
    (["lm.chat_steps=5", "lm.reading_docs_per_class=0", "lm.scene_docs_per_class=0"], "lm.chat_steps",
     "reading_docs_per_class"),
])
def test_chat_tuning_config_errors_name_the_key(overrides: list[str], key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(SMOKE, overrides)
    assert key in str(info.value) and hint in str(info.value) and "\n" not in str(info.value)
