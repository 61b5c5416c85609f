"""`tuna lm` on the smoke world: the saved folder, metrics, loss, determinism, up-to-date logic, loading, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lm_support import lm_config
from support import SMOKE, World, quiet
from tuna.cli import main
from tuna.errors import ConfigError, TunaError
from tuna.foundation.lm import LMUnavailable, is_up_to_date, lm_path, load_lm, run_lm, train_lm
from tuna.foundation.lm.pretrain import encode_documents, membership_probe, pack, probe_prompt
from tuna.recipe import load_recipe
from tuna.retrieval.clip import weights_sha256


def test_training_writes_model_tokenizer_manifest_metrics(trained: dict[str, Any], world: World) -> None:
    path, manifest = trained["path"], trained["manifest"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "manifest.json", "metrics.json"):
        assert (path / name).is_file(), name
    assert not list(path.parent.glob(".lm.*")), "the staging folder is renamed into place"
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert manifest["config"] == trained["cfg"].to_dict()["lm"] and manifest["seed"] == 0
    assert len(manifest["corpus_hash"]) == 64 and manifest["params"] > 0
    corpus = manifest["corpus"]
    assert corpus["text_docs"] == world.manifest["counts"]["text_docs"] == corpus["text_train_docs"] + corpus["text_val_docs"]
    assert corpus["text_val_docs"] >= 1 and corpus["captions"] > 0 and corpus["answers"] > 0
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["val"]["perplexity"] > 1 and metrics["val"]["docs"] == corpus["text_val_docs"]
    sizes = {"id": world.id_names, "ood": world.ood_names, "b": world.b_names}
    for split, names in sizes.items():
        probe = metrics["probe"][split]
        assert probe["n"] == len(names)
        assert 0 <= probe["exact"] <= probe["coarse"] <= 1 and 0 <= probe["superordinate"] <= 1
        assert metrics["tokens_per_name"][split]["n"] == len(names)
        assert metrics["tokens_per_name"][split]["mean"] >= 1
        if len(names) >= 2:
            member = metrics["membership"][split]
            assert member["n"] >= 4 * len(names) and 0 <= member["accuracy"] <= 1 and 0 <= member["yes_ratio"] <= 1
            assert manifest["membership"][split] == member["accuracy"]


def test_membership_probe_scores_the_yes_no_logits(trained: dict[str, Any], world: World) -> None:
    """A scripted model that answers by reading the prompt scores 1.0; one that always says No scores the No share."""
    import re
    from types import SimpleNamespace

    _, tok = load_lm(trained["path"])
    taxonomy = json.loads((world.root / "taxonomy.json").read_text())
    yes, no = (tok.encode(f"ASSISTANT: {w}", add_special_tokens=False)[-1] for w in ("Yes", "No"))

    class Reader:
        device = torch.device("cpu")

        def __init__(self, honest: bool) -> None:
            self.honest = honest

        def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
            logits = torch.zeros(*input_ids.shape, len(tok))
            for row, ids in enumerate(input_ids):
                scene, question = tok.decode(ids, skip_special_tokens=True).split("\n")[:2]
                asked = re.search(r"(?:an?) (\w+)(?: in (?:the|this) image)?\?", question).group(1)
                present = self.honest and re.search(rf"\b{asked}\b", scene) is not None
                logits[row, -1, yes if present else no] = 1.0
            return SimpleNamespace(logits=logits)

    honest = membership_probe(Reader(True), tok, taxonomy, seed=0, per_class=2)
    assert honest and all(v["accuracy"] == 1.0 and v["yes_ratio"] == 0.5 for v in honest.values())
    never = membership_probe(Reader(False), tok, taxonomy, seed=0, per_class=2)
    assert all(v["accuracy"] == 0.5 and v["yes_ratio"] == 0.0 for v in never.values())


def test_loss_decreases(trained: dict[str, Any]) -> None:
    loss = trained["manifest"]["loss"]
    assert loss["steps"] >= trained["cfg"].lm.epochs
    assert loss["per_epoch"][-1] < loss["first"]
    assert loss["per_epoch"][-1] < loss["per_epoch"][0]


def test_saved_lm_loads_and_matches_the_manifest(trained: dict[str, Any]) -> None:
    model, tok = load_lm(trained["path"])
    assert not model.training
    assert weights_sha256(model)[:16] == trained["manifest"]["fingerprint"]
    assert sum(p.numel() for p in model.parameters()) == trained["manifest"]["params"]
    assert model.config.vocab_size == len(tok) == trained["manifest"]["vocab_size"]
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 3)
    assert model.config.max_position_embeddings == trained["cfg"].lm.max_length
    ids = tok(probe_prompt("zedul"), return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4) or int(out[0, -1]) == tok.eos_token_id


def test_same_seed_same_weights_other_seed_other_weights(trained: dict[str, Any], world: World, tmp_path: Path) -> None:
    again = train_lm(lm_config(world, tmp_path / "same"), progress=False, log=quiet)
    assert again["fingerprint"] == trained["manifest"]["fingerprint"]
    other = train_lm(lm_config(world, tmp_path / "seed1", "run.seed=1"), progress=False, log=quiet)
    assert other["fingerprint"] != trained["manifest"]["fingerprint"]
    assert other["corpus_hash"] == trained["manifest"]["corpus_hash"], "same world, same input text"


def test_is_up_to_date_follows_config_seed_and_output(trained: dict[str, Any], world: World, tmp_path: Path) -> None:
    cfg = trained["cfg"]
    assert is_up_to_date(cfg)
    assert not is_up_to_date(dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, epochs=cfg.lm.epochs + 1)))
    assert not is_up_to_date(load_recipe(SMOKE, [f"run.data_dir={cfg.data_dir}", "run.seed=3"]))
    assert not is_up_to_date(load_recipe(SMOKE, [f"run.data_dir={cfg.data_dir}", "lm.vocab_size=600"]))
    assert not is_up_to_date(lm_config(world, tmp_path / "empty"))          # nothing trained there
    assert not is_up_to_date(load_recipe(SMOKE, [f"run.data_dir={tmp_path / 'nothing'}"]))  # no world either
    # Unchanged: run_lm reports the saved LM without training again.
    out = run_lm(cfg, progress=False, log=quiet)
    assert out["status"] == "up to date" and out["fingerprint"] == trained["manifest"]["fingerprint"]


def test_up_to_date_flips_when_the_input_text_changes(trained: dict[str, Any], world: World, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(world.root / "text", copy / "world" / "text")
    for rel in ("alignment/pretrain.json", "instruction/instruct.json", "taxonomy.json"):
        (copy / "world" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(world.root / rel, copy / "world" / rel)
    shutil.copytree(trained["path"], copy / "lm")
    cfg = load_recipe(SMOKE, [f"run.data_dir={copy}"])
    assert is_up_to_date(cfg)
    with (copy / "world" / "text" / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"id": "extra", "text": "The zedul is a kind of berry."}) + "\n")
    assert not is_up_to_date(cfg)


def test_lm_path_prefers_model_language_model(trained: dict[str, Any]) -> None:
    cfg = trained["cfg"]
    assert lm_path(cfg) == str(cfg.data_dir / "lm")
    assert lm_path(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, language_model="lmsys/vicuna-7b-v1.5"))) \
        == "lmsys/vicuna-7b-v1.5"


def test_run_lm_with_model_language_model_loads_and_evaluates(trained: dict[str, Any]) -> None:
    cfg = trained["cfg"]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, language_model=str(trained["path"])))
    out = run_lm(cfg, progress=False, log=quiet)
    assert out["status"] == "loaded" and out["params"] == trained["manifest"]["params"]
    saved = json.loads((trained["path"] / "metrics.json").read_text())
    assert out["metrics"]["val"] == saved["val"]
    assert {s: out["metrics"]["probe"][s]["coarse"] for s in ("id", "ood", "b")} == trained["manifest"]["probe_coarse"]


@pytest.mark.parametrize("kind", ["missing", "relative", "file", "no_config", "bad_id"])
def test_load_lm_errors_are_one_line_and_name_the_fix(kind: str, tmp_path: Path) -> None:
    source: str | Path = {"missing": tmp_path / "nope", "relative": "./nope/lm", "file": tmp_path / "f.bin",
                          "no_config": tmp_path / "empty", "bad_id": "not a hub id"}[kind]
    if kind == "file":
        Path(source).write_bytes(b"x")
    if kind == "no_config":
        Path(source).mkdir()
    with pytest.raises(LMUnavailable) as info:
        load_lm(source)
    message = str(info.value)
    assert "\n" not in message and str(source) in message
    assert "tuna lm" in message and "model.language_model" in message
    assert isinstance(info.value, TunaError) and info.value.exit_code == 2


def test_load_lm_of_an_external_model_without_pad(trained: dict[str, Any], tmp_path: Path) -> None:
    """A checkpoint saved without a pad token (as Vicuna's) loads with <unk> as pad."""
    model, tok = load_lm(trained["path"])
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    _, again = load_lm(str(tmp_path), dtype=torch.float32)
    assert again.pad_token == "<unk>" and again.pad_token_id == 0 and again.chat_template


def test_pack_drops_the_tail_and_keeps_order() -> None:
    blocks, positions = pack([[1, 5, 2], [1, 6, 7, 2]], [1, 0], 3)
    assert blocks.tolist() == [[1, 6, 7], [2, 1, 5]]
    assert positions.tolist() == [[0, 1, 2], [3, 0, 1]]


def test_packed_positions_keep_each_document_to_itself() -> None:
    """A document packed after another gets the logits it gets alone: no attention across the boundary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    first, second = [1, 5, 9, 11, 2], [1, 7, 3, 2]
    blocks, positions = pack([first, second], [0, 1], 9)
    with torch.no_grad():
        packed = model(input_ids=blocks, position_ids=positions, use_cache=False).logits[0, len(first):]
        alone = model(input_ids=torch.tensor([second])).logits[0]
        unmasked = model(input_ids=blocks).logits[0, len(first):]
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)   # without the positions the first document leaks in


def test_encode_documents_adds_bos_and_eos() -> None:
    class Tok:
        eos_token_id = 2

        def __call__(self, docs: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
            return {"input_ids": [[1] + [10 + len(d)] for d in docs]}

    assert encode_documents(Tok(), ["ab", "c"]) == [[1, 12, 2], [1, 11, 2]]
    assert encode_documents(Tok(), []) == []


@pytest.mark.parametrize("override, key, hint", [
    ("lm.heads=3", "lm.heads", "divisible"),
    ("lm.kv_heads=3", "lm.kv_heads", "divisible"),
    ("lm.block_size=1024", "lm.block_size", "max_length"),
    ("lm.vocab_size=100", "lm.vocab_size", "260"),
    ("lm.val_fraction=0", "lm.val_fraction", "(0, 0.5)"),
    ("lm.text_repeats=0", "lm.text_repeats", ">= 1"),
    ("lm.lr=2", "lm.lr", "(0, 1)"),
    ("lm.tie_word_embeddings=1", "lm.tie_word_embeddings", "true or false"),
    ("lm.bogus=1", "'lm.bogus'", "block_size"),
])
def test_lm_config_errors_name_the_key(override: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(SMOKE, [override])
    message = str(info.value)
    assert key in message and hint in message and "\n" not in message


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_lm_prints_one_line(trained: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = trained["cfg"]
    assert main(["lm", "--config", str(SMOKE), f"run.data_dir={cfg.data_dir}", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    assert out[0].startswith(f"lm {cfg.data_dir / 'lm'} (up to date;")
    assert "val ppl" in out[0] and "OOD" in out[0] and "tokens/name" in out[0]


def test_cli_lm_trains_on_a_fresh_dir(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = lm_config(world, tmp_path / "run")
    assert main(["lm", "--config", str(SMOKE), f"run.data_dir={cfg.data_dir}", "lm.epochs=1", "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "(trained;" in out[0]
    assert (cfg.data_dir / "lm" / "manifest.json").is_file()


@pytest.mark.parametrize("overrides, needle", [
    (["model.language_model=/no/such/lm"], "/no/such/lm"),
    ([], "not found"),  # no world under the data dir
])
def test_cli_lm_errors_are_one_line_exit_2(overrides: list[str], needle: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lm", "--config", str(SMOKE), f"run.data_dir={tmp_path}", *overrides, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tuna lm: error: ") and needle in err[0], err
    assert not (tmp_path / "lm").exists()
