"""On a GPU machine (marker `gpu`; never runs on the CPU-only CI here): the smoke recipe trained through `tuna train`
on up to 2 GPU ranks (NCCL), stages 1 and 2, then answered and evaluated on the GPU. Written for issue 16, item 1
(batches, the loss all-reduce and generation on the accelerator); not yet run on a GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import SMOKE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_smoke_trains_on_gpu_ranks_and_answers_on_the_gpu(prepared, tmp_path: Path) -> None:
    from PIL import Image

    from tuna.inference import Predictor
    from tuna.layout import layout
    from tuna.recipe import load_recipe

    data = tmp_path / "data"
    shutil.copytree(prepared.cfg.data_dir, data, ignore=shutil.ignore_patterns("train"))
    ranks = min(2, torch.cuda.device_count())
    overrides = [f"run.data_dir={data}", f"train.ranks={ranks}", "train.precision=bf16"]
    done = subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "all",
                           "--variant", "tuna", *overrides], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cfg = load_recipe(SMOKE, overrides)
    for stage in (1, 2):
        metrics = json.loads((layout(cfg).stage("tuna", stage) / "metrics.json").read_text())
        assert metrics["world_size"] == ranks and metrics["final_loss"] < metrics["first_loss"]

    predictor = Predictor(layout(cfg).model("tuna", 2), cfg.train.system_prompt)
    assert predictor.device.type == "cuda" and next(predictor.model.parameters()).device.type == "cuda"
    image = Image.new("RGB", (cfg.world.image_size, cfg.world.image_size), "white")
    (answer,) = predictor.answer([image], [[]], ["What is in the image?"], tags=[["a", "b"]], min_new_tokens=1)
    assert answer.text

    ev = subprocess.run([sys.executable, "-m", "tuna.cli", "eval", "--config", str(SMOKE), "--variant", "tuna",
                         *overrides], capture_output=True, text=True, timeout=1800)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]


def test_zero3_stages_build_partitioned_on_gpu_ranks(prepared, tmp_path: Path) -> None:
    """Both stages on ZeRO-3 with train.zero3_init on NCCL ranks: each rank holds its share after the build."""
    data = tmp_path / "data"
    shutil.copytree(prepared.cfg.data_dir, data, ignore=shutil.ignore_patterns("train"))
    ranks = min(2, torch.cuda.device_count())
    overrides = [f"run.data_dir={data}", f"train.ranks={ranks}", "train.precision=bf16", "train.zero3_init=true",
                 "train.stage1.zero_stage=3", "train.stage2.zero_stage=3", "train.gradient_checkpointing=true"]
    done = subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "all",
                           "--variant", "tuna", *overrides], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in (1, 2):
        metrics = json.loads((data / f"train/tuna/stage{stage}/metrics.json").read_text())
        part = metrics["partitioned_init"]
        assert metrics["final_loss"] < metrics["first_loss"] and part["partitioned"] > 0
        if stage == 2:
            assert part["held"] <= part["params"] / ranks + 1024
