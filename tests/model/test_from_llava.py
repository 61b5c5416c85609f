"""TUNA initialised from a LLaVA-1.5 folder + a full CLIP (tiny random checkpoints saved in those formats)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import CLIPModel, CLIPVisionModel

from llava_tiny import save_pair
from tuna.model import ModelLoadError
from tuna.model.from_llava import build_tuna_from_llava, check_llava_pair
from tuna_tiny import K, T, make_batch, tiny_clip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_pair(tmp_path_factory.mktemp("ckpt"))


def test_weights_come_from_llava_and_clip(saved):
    llava_dir, clip_dir, llava = saved
    model = build_tuna_from_llava(llava_dir, clip_dir, num_tags=K, max_tag_tokens=T).eval()
    inner = llava.model
    for name, tensor in inner.vision_tower.state_dict().items():
        assert torch.equal(model.clip.vision_model.state_dict()[name], tensor), name
    for name, tensor in inner.multi_modal_projector.state_dict().items():
        assert torch.equal(model.projector.state_dict()[name], tensor), name
    for name, tensor in inner.language_model.state_dict().items():
        assert torch.equal(model.language_model.get_decoder().state_dict()[name], tensor), name
    assert torch.equal(model.language_model.get_output_embeddings().weight, llava.lm_head.weight)
    clip = CLIPModel.from_pretrained(str(clip_dir))   # the text tower and the projections are the CLIP's
    for part in ("text_model", "text_projection", "visual_projection"):
        for name, tensor in getattr(clip, part).state_dict().items():
            assert torch.equal(getattr(model.clip, part).state_dict()[name], tensor), f"{part}.{name}"
    cfg = model.config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy, cfg.projector_type) == (-2, "default", "mlp2x_gelu")
    assert not any(p.is_meta for p in model.parameters())
    assert not any(p.requires_grad for p in model.clip.parameters())

    batch = make_batch(model)
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"].clone())
    assert out.logits.shape[:2] == (2, 10 - 1 + cfg.num_patches + K * (1 + T))
    assert torch.isfinite(out.loss)


def test_baseline_from_llava_gives_llavas_logits(saved):
    """tag_mode none + LLaVA's weights = the LLaVA itself (its `<image>` repeated P times)."""
    llava_dir, clip_dir, llava = saved
    model = build_tuna_from_llava(llava_dir, clip_dir, tag_mode="none").eval()
    batch = make_batch(model)
    ids = batch["input_ids"]
    p = model.config.num_patches
    llava_ids = torch.cat([ids[:, :3], torch.full((2, p), llava.config.image_token_index), ids[:, 4:]], dim=1)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=batch["pixel_values"]).logits
        ref = llava(input_ids=llava_ids, pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_bad_inputs_name_path_and_fix(saved, tmp_path):
    llava_dir, clip_dir, _ = saved
    with pytest.raises(ModelLoadError, match=r"model.llava: no folder at '.*nowhere'; point model.llava at"):
        check_llava_pair(tmp_path / "nowhere", clip_dir)
    with pytest.raises(ModelLoadError, match=r"model.llava: '.*clip' holds a 'clip' model, not LLaVA"):
        check_llava_pair(clip_dir, clip_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no config.json"):
        check_llava_pair(tmp_path / "empty", clip_dir)
    CLIPVisionModel(tiny_clip().config.vision_config).save_pretrained(tmp_path / "vision_only")
    with pytest.raises(ModelLoadError, match="is a CLIP without a text tower"):
        check_llava_pair(llava_dir, tmp_path / "vision_only")
    wide = tiny_clip().config.to_dict()
    wide["vision_config"].update(hidden_size=64, intermediate_size=128)
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "config.json").write_text(json.dumps(wide))
    with pytest.raises(ModelLoadError, match="the CLIP's vision hidden_size is 64 but model.llava's vision tower has 32"):
        check_llava_pair(llava_dir, tmp_path / "wide")
    with pytest.raises(ModelLoadError, match=r"model.vision_feature_layer: -1, but .* trained on -2 .*set model.vision_feature_layer=-2"):
        build_tuna_from_llava(llava_dir, clip_dir, vision_feature_layer=-1)
    with pytest.raises(ModelLoadError, match="model.projector: 'linear'"):
        build_tuna_from_llava(llava_dir, clip_dir, projector="linear")
    with pytest.raises(ModelLoadError, match="model.vision_crops: 3, but .* trained on 0 .no crop tokens.; set model.vision_crops=0"):
        build_tuna_from_llava(llava_dir, clip_dir, vision_crops=3)


def test_recipe_key_model_llava_builds_stage_one(saved, tmp_path):
    """`model.llava` + `model.vision_tower` in a recipe: stage 1 starts from LLaVA; the LM source is the LLaVA folder."""
    from support import word_tokenizer
    from tuna.foundation.lm import lm_path
    from tuna.recipe import load_recipe
    from tuna.train.build import build_model

    llava_dir, clip_dir, llava = saved
    word_tokenizer().save_pretrained(llava_dir)
    cfg = load_recipe("configs/smoke.yaml", [f"model.llava={llava_dir}", f"model.vision_tower={clip_dir}",
                                             "model.vision_feature_layer=-2", "model.vision_feature_select_strategy=default",
                                             "model.vision_feature_pool=1", f"run.data_dir={tmp_path}"])
    assert lm_path(cfg) == str(llava_dir)
    model, tokenizer = build_model(cfg, "tuna", 1)
    assert torch.equal(model.projector.linear_1.weight, llava.model.multi_modal_projector.linear_1.weight)
    assert tokenizer.pad_token is not None


def test_plan_from_checkpoint_folders(tmp_path) -> None:
    """`tuna plan` reads the config.json of the folders model.llava and model.vision_tower name."""
    from support import SMOKE
    from tuna.model.architecture import count_parts
    from tuna.plan import make_plan
    from tuna.recipe import load_recipe

    llava_dir, clip_dir, _ = save_pair(tmp_path)
    cfg = load_recipe(SMOKE, [f"model.llava={llava_dir}", f"model.vision_tower={clip_dir}", f"run.data_dir={tmp_path}",
                              "model.vision_feature_layer=-2", "model.vision_feature_select_strategy=default",
                              "model.vision_feature_pool=1"])
    plan = make_plan(cfg)
    assert plan.sources["lm"].endswith("llava/config.json (text_config)")
    model = build_tuna_from_llava(llava_dir, clip_dir, max_tag_tokens=8, num_tags=cfg.model.num_tags)
    assert plan.parts == count_parts(model)


def test_tuna_lm_evaluates_the_llava_lm(saved, world, tmp_path):
    """`tuna lm` with model.llava: LLaVA's LM is evaluated on the world text, nothing is trained."""
    from support import word_tokenizer
    from tuna.foundation.lm import run_lm
    from tuna.recipe import load_recipe

    llava_dir, clip_dir, _ = saved
    word_tokenizer().save_pretrained(llava_dir)
    cfg = load_recipe("configs/smoke.yaml", [f"run.data_dir={world.cfg.run.data_dir}", f"model.llava={llava_dir}",
                                             f"model.vision_tower={clip_dir}"])
    out = run_lm(cfg, progress=False, log=lambda s: None)
    assert out["status"] == "loaded" and out["path"] == str(llava_dir)
    assert out["params"] == sum(p.numel() for p in saved[2].model.language_model.parameters()) + saved[2].lm_head.weight.numel()
    assert out["metrics"]["val"]["perplexity"] > 0
    assert not (world.cfg.data_dir / "lm").exists()


def test_train_refuses_a_bad_llava_in_one_line_before_launching(saved, tmp_path, capsys):
    from tuna import cli

    llava_dir, clip_dir, _ = saved
    args = ["train", "--config", "configs/smoke.yaml", f"run.data_dir={tmp_path}", "--stage", "1"]
    assert cli.main([*args, f"model.llava={clip_dir}", f"model.vision_tower={clip_dir}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a 'clip' model, not LLaVA" in err
    assert not (tmp_path / "train").exists()


def test_cluster_doors_check_the_pair_before_any_pod(saved, tmp_path, capsys):
    """The KFP validate task (in-cluster, the data PVC mounted) and `tuna train --launcher trainjob` read the pair's
    configs before any pod starts; a pod-only path (not on this machine) is left to the validate task."""
    from support import SMOKE
    from tuna.kfp.validate import validate_inputs
    from tuna.recipe import load_recipe
    from tuna.train.cluster import launch

    llava_dir, clip_dir, _ = saved
    bad = [f"model.llava={clip_dir}", f"model.vision_tower={clip_dir}", f"run.data_dir={tmp_path}"]
    with pytest.raises(ModelLoadError, match=r"model.llava: '.*clip' holds a 'clip' model, not LLaVA"):
        validate_inputs(str(SMOKE), bad)
    with pytest.raises(ModelLoadError, match=r"model.llava: '.*clip' holds a 'clip' model, not LLaVA"):
        launch(load_recipe(SMOKE, bad), 1, launcher="trainjob", dry_run=True)
    good = [f"model.llava={llava_dir}", f"model.vision_tower={clip_dir}", "model.vision_feature_layer=-2",
            "model.vision_feature_select_strategy=default", "model.vision_feature_pool=1", f"run.data_dir={tmp_path}"]
    assert validate_inputs(str(SMOKE), good)[0] == good
    pod_only = ["model.llava=/mnt/tuna/ckpt/llava-1.5-7b-hf", f"model.vision_tower={clip_dir}", "run.data_dir=smoke"]
    assert launch(load_recipe(SMOKE, pod_only), 1, launcher="trainjob", dry_run=True) == "DryRun"
    assert "kind: TrainJob" in capsys.readouterr().out
