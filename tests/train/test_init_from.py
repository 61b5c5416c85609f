"""train.stage2.init_from: a tag variant's stage 2 starts from the baseline's finished stage-2 model (its LM,
projector and vision tower), keeping its own stage-1 tag encoder and tuner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import SMOKE
from tuna.errors import ConfigError, TrainError
from tuna.recipe import load_recipe

INIT = "train.stage2.init_from=baseline"


@pytest.mark.parametrize("override, name", [("train.stage2.init_from=tuna", "init_from"),
                                            ("train.stage2.init_from=llava", "init_from"),
                                            ("train.stage1.init_from=baseline", "stage1.init_from")])
def test_init_from_names_a_tagless_variant_and_only_in_stage_2(override: str, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_recipe(SMOKE, [override])


def test_init_epochs_and_lm_scale_act_on_the_started_variants_only() -> None:
    from tuna.train.freshness import fingerprint, variant_recipe

    cfg = load_recipe(SMOKE, [INIT, "train.stage2.init_epochs=0.5", "train.stage2.init_lm_lr_scale=0.2"])
    tuna, baseline = variant_recipe(cfg, "tuna").train.stage2, variant_recipe(cfg, "baseline").train.stage2
    assert (tuna.epochs, tuna.lm_lr_scale) == (0.5, 0.2)
    assert (baseline.epochs, baseline.lm_lr_scale) == (cfg.train.stage2.epochs, cfg.train.stage2.lm_lr_scale)
    assert variant_recipe(variant_recipe(cfg, "tuna"), "tuna") == variant_recipe(cfg, "tuna")
    assert variant_recipe(load_recipe(SMOKE, [INIT]), "tuna") == load_recipe(SMOKE, [INIT])
    assert fingerprint(cfg, "baseline", 2, 2) == fingerprint(load_recipe(SMOKE), "baseline", 2, 2)
    assert fingerprint(cfg, "tuna", 2, 2) != fingerprint(load_recipe(SMOKE, [INIT]), "tuna", 2, 2)
    with pytest.raises(ConfigError, match="init_epochs.*set init_from too"):
        load_recipe(SMOKE, ["train.stage2.init_epochs=2"])


def test_init_variant_and_training_order() -> None:
    from tuna.train.freshness import init_variant, training_order

    plain, init = load_recipe(SMOKE), load_recipe(SMOKE, [INIT])
    assert [init_variant(init, v) for v in ("tuna", "tuner_off", "baseline")] == ["baseline", "baseline", None]
    assert init_variant(plain, "tuna") is None
    assert training_order(init, ("tuna", "tuner_off", "baseline")) == ("baseline", "tuna", "tuner_off")
    assert training_order(plain, ("tuna", "baseline")) == ("tuna", "baseline")
    assert training_order(init, ("tuna",)) == ("tuna",)


def test_tuna_stage2_is_stale_when_the_baseline_it_starts_from_is_retrained(tmp_path: Path) -> None:
    from tuna.train.freshness import fingerprint

    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", INIT])
    metrics = tmp_path / "train/baseline/stage2/metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"final_loss": 1.0}')
    before = fingerprint(cfg, "tuna", 2, 2)
    baseline = fingerprint(cfg, "baseline", 2, 2)
    metrics.write_text('{"final_loss": 0.9}')
    assert fingerprint(cfg, "tuna", 2, 2) != before and fingerprint(cfg, "baseline", 2, 2) == baseline
    assert fingerprint(cfg, "tuna", 1, 2) == fingerprint(load_recipe(SMOKE, [f"run.data_dir={tmp_path}"]), "tuna", 1, 2)


def test_adopt_weights_takes_all_but_the_tag_parts_and_refuses_a_misfit(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
    from tuna.model import build_tuna
    from tuna.train.build import OWN_PARTS, adopt_weights
    from tuna_tiny import tiny_clip, tiny_lm

    torch.manual_seed(0)
    donor = build_tuna(tiny_clip(), tiny_lm(), num_tags=3, max_tag_tokens=4, tag_mode="none")
    donor.save_pretrained(str(tmp_path / "donor"))
    torch.manual_seed(1)
    model = build_tuna(tiny_clip(), tiny_lm(), num_tags=3, max_tag_tokens=4)
    own = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(OWN_PARTS)}
    taken = adopt_weights(model, tmp_path / "donor", INIT, "tuna")
    theirs, mine = donor.state_dict(), model.state_dict()
    assert taken > 0 and own
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith(OWN_PARTS))
    assert all(torch.equal(mine[k], v) for k, v in own.items())
    with pytest.raises(TrainError, match=r"holds no trained model; run `tuna train --variant baseline` first"):
        adopt_weights(model, tmp_path / "train" / "baseline" / "stage2" / "model", INIT, "tuna")
    other = build_tuna(tiny_clip(), tiny_lm(), num_tags=3, max_tag_tokens=4, projector="linear", tag_mode="none")
    other.save_pretrained(str(tmp_path / "other"))
    with pytest.raises(TrainError, match="does not fit 'tuna'.*one recipe's model section"):
        adopt_weights(model, tmp_path / "other", INIT, "tuna")


def _train(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`tuna train --stage 2 --variant tuna` with the options first and the key=value overrides last."""
    options = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if a not in options]
    return subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "2", "--variant",
                           "tuna", *options, f"run.data_dir={data_dir}", *overrides], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for 2 CPU ranks")
def test_tuna_stage2_trains_on_two_ranks_from_the_baselines_finished_model(trained, tmp_path: Path) -> None:
    """With the LM frozen in the started stage 2 (init_lm_lr_scale=0: the ranks read it), the trained TUNA's LM is the
    baseline's stage-2 LM to the bit; its tag encoder is its own; without the baseline's model it stops before any rank
    starts, in one line."""
    from safetensors.torch import load_file

    d = tmp_path / "init"
    shutil.copytree(trained.cfg.data_dir, d, ignore=shutil.ignore_patterns("eval", "serve"))
    shutil.rmtree(d / "train/tuna/stage2")
    done = _train(d, INIT, "train.stage2.init_lm_lr_scale=0", "train.stage2.zero_stage=2")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    assert "tuna stage 2 starts from baseline's stage-2 model (train.stage2.init_from)" in out
    tuna = load_file(str(d / "train/tuna/stage2/model/model.safetensors"))
    base = load_file(str(d / "train/baseline/stage2/model/model.safetensors"))
    first = load_file(str(d / "train/tuna/stage1/model/model.safetensors"))
    lm = [k for k in tuna if k.startswith("language_model.") and "embed" not in k]
    assert lm and all(torch.equal(tuna[k], base[k]) for k in lm)
    assert any(not torch.equal(base[k], first[k]) for k in lm)          # the baseline's stage 2 trained its LM
    tags = [k for k in tuna if k.startswith("tag_encoder.")]
    assert tags and any(not torch.equal(tuna[k], base[k]) for k in tags)
    # the baseline's model gone: a one-line refusal before any rank starts
    shutil.rmtree(d / "train/baseline/stage2")
    refused = _train(d, "--force", INIT)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in said
    assert "run `tuna train --variant baseline` first, or set train.stage2.init_from=null" in said
