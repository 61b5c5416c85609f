"""Exports in Hugging Face formats: TUNA through the Auto classes; the baseline as a plain LlavaForConditionalGeneration
from the CLI (`tuna export --format hf|llava`), on a tiny model saved where `tuna train` saves stage 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessorPil,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)

from support import SMOKE, word_tokenizer
from tuna import cli
from tuna.layout import layout
from tuna.model import TunaForConditionalGeneration, build_tuna
from tuna.recipe import load_recipe
from tuna_tiny import make_batch, tiny_clip


def _save_trained(cfg, variant: str, tie: bool = False, image_token: bool = False, **kw) -> TunaForConditionalGeneration:
    """A tiny model saved as `tuna train` leaves stage 2 (weights, tokenizer, image processor, clip_tokenizer/);
    ``image_token``: the tokenizer has `<image>` in the vocabulary already (as llava-hf's)."""
    tok = word_tokenizer()
    if image_token:
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      tie_word_embeddings=tie))
    model = build_tuna(tiny_clip(), lm, num_tags=3, max_tag_tokens=4, **kw).eval()
    folder = layout(cfg).model(variant, 2)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))
    tok.save_pretrained(str(folder / "clip_tokenizer"))
    return model


def _batch(model: TunaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """tuna_tiny's random batch with LM ids folded into this model's (word tokenizer) vocabulary, last id excluded."""
    batch = make_batch(model)
    vocab = model.config.text_config.vocab_size
    image = batch["input_ids"] == model.config.image_token_index
    fold = lambda t: 3 + t % (vocab - 4)   # noqa: E731  (ids 3..V-2: never the last id, an `<image>` token)
    batch["input_ids"] = torch.where(image, batch["input_ids"], fold(batch["input_ids"]))
    batch["tag_input_ids"] = fold(batch["tag_input_ids"])
    return batch


@pytest.fixture
def cfg(tmp_path):
    return load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])


def test_tuna_hf_export_loads_through_auto_classes(cfg, tmp_path):
    model = _save_trained(cfg, "tuna")
    out = tmp_path / "tuna-hf"
    assert cli.main(["export", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "--format", "hf", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "tuna" and saved["architectures"] == ["TunaForConditionalGeneration"]
    assert str(tmp_path) not in (out / "config.json").read_text()          # no path of the export machine
    assert AutoConfig.from_pretrained(str(out)).model_type == "tuna"
    batch = _batch(model)
    for auto in (AutoModel, AutoModelForImageTextToText):
        loaded = auto.from_pretrained(str(out)).eval()
        assert type(loaded) is TunaForConditionalGeneration
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    assert (out / "clip_tokenizer" / "tokenizer.json").is_file() and (out / "preprocessor_config.json").is_file()


def test_auto_classes_know_tuna_after_importing_tuna_model(tmp_path):
    """A fresh interpreter: `import tuna.model` is all it takes (no trust_remote_code)."""
    model = build_tuna(tiny_clip(), LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=4)), num_tags=2)
    model.save_pretrained(str(tmp_path / "m"))
    code = ("import tuna.model; from transformers import AutoModel; "
            f"print(type(AutoModel.from_pretrained({str(tmp_path / 'm')!r})).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "TunaForConditionalGeneration", done.stderr[-500:]


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])   # the world's tiny LM ties its head
def test_baseline_exports_as_plain_llava_with_the_same_logits(cfg, tmp_path, tie):
    model = _save_trained(cfg, "baseline", tie=tie, tag_mode="none")   # trained with LLaVA's -200 image token
    assert model.config.image_token_index == -200
    out = tmp_path / "llava"
    assert cli.main(["export", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "--format", "llava", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "llava" and saved["architectures"] == ["LlavaForConditionalGeneration"]
    vocab = model.config.text_config.vocab_size
    llava = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    assert type(AutoModelForImageTextToText.from_pretrained(str(out))) is LlavaForConditionalGeneration
    assert llava.config.image_token_index == vocab and llava.generation_config.suppress_tokens == [vocab]
    processor = AutoProcessor.from_pretrained(str(out))
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == vocab

    batch = _batch(model)
    ids = batch["input_ids"]
    p = model.config.num_patches
    llava_ids = torch.cat([ids[:, :3], torch.full((2, p), vocab), ids[:, 4:]], dim=1)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=batch["pixel_values"]).logits
        theirs = llava(input_ids=llava_ids, pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(theirs[..., :vocab], ours, atol=1e-5, rtol=0)
    assert torch.all(theirs[..., vocab] == 0)                         # the appended <image> row, suppressed in generate

    # the processor expands one <image> into the model's image tokens, as llava-hf's does
    from PIL import Image

    enc = processor(images=Image.new("RGB", (40, 40), "red"), text="<image> a", return_tensors="pt")
    assert int((enc["input_ids"] == vocab).sum()) == p
    with torch.no_grad():
        assert llava(**enc).logits.shape[1] == enc["input_ids"].shape[1]


def test_llava_export_refuses_tuna_in_one_line(cfg, tmp_path, capsys):
    _save_trained(cfg, "tuna")
    code = cli.main(["export", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "--format", "llava", "--variant", "tuna"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "needs tag_mode 'none'" in err and "--variant baseline" in err
    assert cli.main(["export", "--config", str(SMOKE), f"run.data_dir={tmp_path / 'none'}", "--format", "hf"]) == 2


def test_llava_export_uses_the_tokenizers_own_image_token(cfg, tmp_path):
    model = _save_trained(cfg, "baseline", image_token=True, tag_mode="none")
    vocab = model.config.text_config.vocab_size
    out = tmp_path / "llava"
    assert cli.main(["export", "--config", str(SMOKE), f"run.data_dir={tmp_path}", "--format", "llava", "--out", str(out)]) == 0
    llava = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    assert llava.config.image_token_index == vocab - 1 and llava.config.text_config.vocab_size == vocab   # nothing grown
    batch = _batch(model)
    ids = batch["input_ids"]
    llava_ids = torch.cat([ids[:, :3], torch.full((2, model.config.num_patches), vocab - 1), ids[:, 4:]], dim=1)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=batch["pixel_values"]).logits
        theirs = llava(input_ids=llava_ids, pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
