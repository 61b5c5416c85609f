"""ZeRO-3 partitioned construction (train.zero3_init): the refusals before any rank builds, the context that makes
transformers partition, and the held-parameter count. The real 2-rank partitioned training is in
tests/train/test_deepspeed_training.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from support import SMOKE
from tuna.recipe import load_recipe
from tuna.train.engine import TrainError
from tuna.train.zero_init import build_partitioned, check_partitionable, checkpoint_sources, held, partitioned_init


def _config(folder: Path, **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **extra}))
    return folder


def test_a_hugging_face_folder_or_hub_id_passes(tmp_path: Path) -> None:
    check_partitionable("model.language_model", str(_config(tmp_path / "lm")))
    check_partitionable("model.language_model", "lmsys/vicuna-7b-v1.5")   # fetched by prefetch, not checked here


@pytest.mark.parametrize("quant", [{"quant_method": "bitsandbytes", "load_in_4bit": True}, {"quant_method": "gptq", "bits": 4}])
def test_quantized_weights_are_refused_in_one_line_naming_the_key_and_method(tmp_path: Path, quant: dict) -> None:
    lm = _config(tmp_path / "lm", quantization_config=quant)
    with pytest.raises(TrainError, match=rf"^train.zero3_init: model.language_model '.*lm' holds {quant['quant_method']} "
                                         r"weights, which DeepSpeed cannot partition .*unquantized checkpoint") as err:
        check_partitionable("model.language_model", str(lm))
    assert "\n" not in str(err.value)
    llava = _config(tmp_path / "llava", text_config={"quantization_config": quant})   # a LLaVA's quantized LM
    with pytest.raises(TrainError, match="model.llava .* holds"):
        check_partitionable("model.llava", str(llava))


def test_a_deepspeed_checkpoint_folder_is_refused_with_the_consolidation_fix(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    (ckpt / "step-000008").mkdir(parents=True)
    (ckpt / "latest").write_text("step-000008")
    (ckpt / "step-000008" / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(TrainError, match=r"is a DeepSpeed ZeRO checkpoint, which cannot be built partitioned; consolidate"):
        check_partitionable("model.language_model", str(ckpt))
    with pytest.raises(TrainError, match=r"not a Hugging Face model folder \(no config.json\).*save_pretrained"):
        check_partitionable("model.language_model", str(tmp_path / "checkpoints" / "step-000008"))


def test_stage1_from_a_llava_on_zero3_is_refused_before_building(tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", f"model.llava={tmp_path / 'llava'}", "train.zero3_init=true",
                              f"model.vision_tower={tmp_path / 'clip'}",
                              "train.stage1.zero_stage=3"])
    with pytest.raises(TrainError, match="model.llava: LLaVA's vision tower and projector are copied .* ZeRO-2"):
        build_partitioned(cfg, "tuna", 1, 0, lambda: None)


def test_checkpoint_sources_name_the_recipe_keys(tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    assert list(checkpoint_sources(cfg, "tuna", 1)) == ["model.vision_tower", "model.language_model"]
    assert checkpoint_sources(cfg, "tuna", 2) == {"stage 1's model of 'tuna'": str(tmp_path / "train/tuna/stage1/model")}


def test_zero3_init_is_a_boolean_recipe_key() -> None:
    assert load_recipe(SMOKE).train.zero3_init is False
    with pytest.raises(Exception, match="zero3_init.*true or false"):
        load_recipe(SMOKE, ["train.zero3_init=sometimes"])


def test_partitioned_init_makes_transformers_see_zero3_only_inside_the_block() -> None:
    from transformers.integrations import is_deepspeed_zero3_enabled

    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    with partitioned_init(ds):
        assert is_deepspeed_zero3_enabled()
    assert not is_deepspeed_zero3_enabled()
    with pytest.raises(TrainError, match="needs a ZeRO-3 DeepSpeed config, got zero_optimization.stage 2"):
        with partitioned_init({"zero_optimization": {"stage": 2}}):
            pass


def test_held_counts_whole_parameters_on_an_unpartitioned_model() -> None:
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2))
    n = sum(p.numel() for p in lm.parameters())
    assert held(lm) == {"params": n, "held": n, "partitioned": 0}
    w = lm.lm_head.weight   # what DeepSpeed's zero.Init leaves: the full size in ds_numel, this rank's share in ds_tensor
    w.ds_numel, w.ds_tensor = w.numel(), torch.zeros(w.numel() // 2)
    assert held(lm) == {"params": n, "held": n - w.numel() // 2, "partitioned": w.numel()}
