"""bench/diagnose_existence.py probe: a per-token reader of the connector's input, trained on the instruction images'
objects and asked the POPE validation ID questions (the smoke world's encoder, stages untrained)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support import SMOKE, World
from tuna.recipe import Recipe, load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import diagnose_existence  # noqa: E402  (bench/ is not a package)


def visual_token_count(cfg: Recipe, crops: int) -> int:
    """(CLS with the "full" strategy) + the pooled patch grid + one CLS per crop."""
    grid = (cfg.world.image_size // cfg.encoder.patch_size // cfg.model.vision_feature_pool) ** 2
    return int(cfg.model.vision_feature_select_strategy == "full") + grid + crops * crops


@pytest.mark.parametrize(("crops", "linear"), [(3, False), (0, True)])
def test_token_probe_reads_the_recipes_visual_tokens(prepared: World, crops: int, linear: bool) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={prepared.cfg.data_dir}", f"model.vision_crops={crops}"])
    result = diagnose_existence.token_probe(cfg, linear=linear, epochs=2)
    assert result["tokens"] == visual_token_count(cfg, crops)
    assert result["reader"] == ("linear" if linear else "mlp")
    assert result["questions"] > 0 and result["classes"] > 1
    for kind in ("random", "popular", "adversarial"):
        assert 0.0 <= result[f"id_{kind}"] <= 1.0 and 0.0 <= result[f"id_{kind}_yes"] <= 1.0
    assert result["id"] == pytest.approx(sum(result[f"id_{k}"] for k in ("random", "popular", "adversarial")) / 3, abs=2e-3)


def test_probe_takes_overrides_without_out(prepared: World, capsys: pytest.CaptureFixture[str]) -> None:
    """`probe model.vision_crops=2 ...`: the first word is an override, not train's OUT folder."""
    import json

    overrides = ["model.vision_crops=2", f"run.data_dir={prepared.cfg.data_dir}"]
    assert diagnose_existence.main(["probe", "--config", str(SMOKE), "--threads", "1", "--linear", *overrides]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["tokens"] == visual_token_count(load_recipe(SMOKE, overrides), 2) and result["train_images"] > 0
