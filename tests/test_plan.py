"""`tuna plan`: the architecture on the meta device (counts equal the real model's), memory per GPU, MLflow."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from support import SMOKE
from tuna import cli
from tuna.model import TunaConfig, TunaForConditionalGeneration
from tuna.model.architecture import (
    PARTS,
    clip_config_from_sizes,
    count_parts,
    largest_layer,
    lm_config_from_sizes,
    meta_tuna,
    part_modules,
)
from tuna.plan import PlanError, activation_bytes, make_plan
from tuna.recipe import LMSizes, TextSizes, VisionSizes, load_recipe

TINY = [
    "plan.vision={hidden_size: 32, intermediate_size: 64, layers: 2, heads: 4, image_size: 32, patch_size: 8}",
    "plan.clip_text={hidden_size: 32, intermediate_size: 64, layers: 2, heads: 4, vocab_size: 50, max_positions: 16, "
    "projection_dim: 16}",
    "plan.lm={hidden_size: 48, intermediate_size: 96, layers: 2, heads: 4, kv_heads: 2, vocab_size: 100, "
    "max_positions: 256, tie_word_embeddings: true}",
]
# Public sizes (parameter counts of the released checkpoints).
CLIP_L336_VISION = 303_507_456       # openai/clip-vit-large-patch14-336 vision_model
VICUNA_7B = 6_738_415_616            # lmsys/vicuna-7b-v1.5 (Llama-2-7B shape)
LLAVA_15_7B = 7_063_427_072          # llava-hf/llava-1.5-7b-hf (its vocabulary padded to 32064)


def _tiny_config(**kw) -> TunaConfig:
    clip = clip_config_from_sizes(asdict(VisionSizes(32, 64, 2, 4, 32, 8)), asdict(TextSizes(32, 64, 2, 4, 50, 16, 16)))
    lm = lm_config_from_sizes(asdict(LMSizes(48, 96, 2, 4, 2, 100, 256, True)))
    return TunaConfig(clip_config=clip, text_config=lm, num_tags=3, max_tag_tokens=4, **kw)


@pytest.mark.parametrize("kw", [{}, {"tag_mode": "none", "projector_type": "linear"}])
def test_meta_counts_equal_the_real_model(kw) -> None:
    config = _tiny_config(**kw)
    meta = meta_tuna(config)
    assert all(p.is_meta for p in meta.parameters())
    torch.manual_seed(0)
    real = TunaForConditionalGeneration(config)
    assert count_parts(meta) == count_parts(real)
    assert sum(count_parts(meta).values()) == sum(p.numel() for p in real.parameters())   # tied table once
    assert largest_layer(meta) == largest_layer(real) == 3 * 8 * 8 * 32   # the patch embedding
    assert set(part_modules(real)) == set(PARTS)


def test_plan_from_declared_sizes_matches_the_tiny_model(tmp_path) -> None:
    cfg = load_recipe(SMOKE, [*TINY, f"run.data_dir={tmp_path}", "model.vision_feature_pool=1"])
    plan = make_plan(cfg)
    assert plan.sources == {"clip": "recipe plan.vision + plan.clip_text", "lm": "recipe plan.lm"}
    config = TunaConfig(clip_config=clip_config_from_sizes(asdict(cfg.plan.vision), asdict(cfg.plan.clip_text)),
                        text_config=lm_config_from_sizes(asdict(cfg.plan.lm)), num_tags=cfg.model.num_tags,
                        max_tag_tokens=8, vision_feature_layer=cfg.model.vision_feature_layer,
                        vision_feature_select_strategy=cfg.model.vision_feature_select_strategy)
    real = TunaForConditionalGeneration(config)
    assert plan.total == sum(p.numel() for p in real.parameters())
    assert plan.parts == count_parts(real)
    assert len(plan.rows) == 8
    by = {(r.stage, r.zero, r.checkpointing): r for r in plan.rows}
    gpus = plan.gpus
    assert by[(2, 3, False)].weights == by[(2, 2, False)].weights // gpus
    assert by[(2, 2, True)].activations < by[(2, 2, False)].activations


def test_llava7b_numbers_are_llava_15_7b() -> None:
    plan = make_plan(load_recipe("configs/llava7b.yaml"))
    assert plan.parts["vision_tower"] == pytest.approx(CLIP_L336_VISION, rel=0.01)
    assert plan.parts["projector"] == pytest.approx(20_979_712, rel=0.01)      # 1024*4096 + 4096*4096 + biases
    assert plan.parts["language_model"] == pytest.approx(VICUNA_7B, rel=0.01)
    assert plan.llava_total == pytest.approx(LLAVA_15_7B, rel=0.01)
    assert plan.gpus == 32 and plan.precision == "bf16"
    assert plan.sequence[2] == 2048 + 576 + 5 * 9
    stage2 = {(r.zero, r.checkpointing): r for r in plan.rows if r.stage == 2}
    assert stage2[(3, True)].fits and not stage2[(3, False)].fits and stage2[(3, True)].recipe_choice
    # train.zero3_init: stage 2 (ZeRO-3) is built partitioned over the 32 GPUs; stage 1 (ZeRO-2) whole (2 bytes each).
    whole = 2 * plan.total
    assert plan.build[1] == {"recipe": whole, "whole": whole, "partitioned": 0}
    assert plan.build[2]["partitioned"] == 1 and plan.build[2]["recipe"] == pytest.approx(whole / 32, abs=1)
    off = make_plan(load_recipe("configs/llava7b.yaml", ["train.zero3_init=false"]))
    assert off.build[2]["recipe"] == whole
    one = make_plan(load_recipe("configs/llava7b.yaml", ["train.stage1.zero_stage=3"]))   # stage 1: only the LM split
    lm = plan.parts["language_model"]
    assert one.build[1]["recipe"] == pytest.approx(2 * (plan.total - lm + lm / 32), abs=1)


def test_activation_formula_by_hand() -> None:
    lm = lm_config_from_sizes(asdict(LMSizes(8, 16, 2, 2, 1, 10, 64, False)))
    h, h_kv, i, tokens = 8, 4, 16, 3 * 5
    layer = tokens * (7 * h + 3 * h_kv + 4 * i) * 2
    logits = tokens * 10 * (2 + 8)
    assert activation_bytes(lm, 3, 5, 2, False) == 2 * layer + logits
    assert activation_bytes(lm, 3, 5, 2, True) == 2 * tokens * h * 2 + layer + logits


def test_missing_sizes_are_one_line(tmp_path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    with pytest.raises(PlanError, match=r"no CLIP sizes: '.*encoder' is not a local folder .*declare them"):
        make_plan(cfg)
    code = cli.main(["plan", "--config", str(SMOKE), f"run.data_dir={tmp_path}"])
    assert code == 2


def test_cli_json_and_mlflow(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["plan", "--config", str(SMOKE), *TINY, f"run.data_dir={tmp_path}", "model.vision_feature_pool=1"]
    assert cli.main([*args, "--json", "--no-track"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"] == sum(data["parts"].values()) and len(data["rows"]) == 8
    assert not (tmp_path / "mlflow.db").exists()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "memory per GPU" in out and "logged to MLflow run" in out
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["params_total"] == data["total"]
    assert run.data.params["plan.gpus"] == str(data["gpus"])


def test_plan_nests_under_the_pipeline_run(tmp_path, monkeypatch) -> None:
    """`tuna run` logs the plan before training as a nested run of its parent run."""
    from tuna import track
    from tuna.runner import log_run_plan

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_recipe(SMOKE, [*TINY, f"run.data_dir={tmp_path}", "model.vision_feature_pool=1"])
    with track.pipeline_run(cfg) as parent:
        run_id = log_run_plan(cfg, log=lambda s: None)
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id and run.data.tags["mlflow.runName"] == "plan"
    lines: list[str] = []
    assert log_run_plan(load_recipe(SMOKE, [f"run.data_dir={tmp_path}"]), log=lines.append) is None
    assert lines[0].startswith("== plan: not logged: no CLIP sizes")
