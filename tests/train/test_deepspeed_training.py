"""Real two-rank DeepSpeed training of the smoke recipe through `tuna train` (gloo, fp32, CPU), read back
through the MLflow API; a run killed mid-way and resumed reproduces the uninterrupted loss curve."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support import SMOKE

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores for 2 CPU ranks")


def _cmd(args: tuple[str, ...], data_dir: Path) -> list[str]:
    """`tuna train` with the options first and the key=value overrides last (argparse wants them together)."""
    options = [a for a in args if "=" not in a or a.startswith("--")]
    overrides = [a for a in args if a not in options]
    return [sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), *options, f"run.data_dir={data_dir}",
            *overrides]


def _tuna(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(args, data_dir), capture_output=True, text=True, timeout=600)


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_two_stages_on_two_ranks_save_hf_models_and_mlflow_runs(trained) -> None:
    from mlflow.tracking import MlflowClient

    from tuna.model import TunaForConditionalGeneration
    from tuna.retrieval.clip import load_encoder
    from tuna.track import tracking_uri

    prepared = trained  # `tuna train --stage all` ran in the fixture: stage 1 on ZeRO-2, stage 2 on ZeRO-3
    d = prepared.cfg.data_dir
    s1 = json.loads((d / "train/tuna/stage1/metrics.json").read_text())
    s2 = json.loads((d / "train/tuna/stage2/metrics.json").read_text())
    assert (s1["world_size"], s1["zero_stage"], s2["zero_stage"]) == (2, 2, 3)
    # Stage 2 was built partitioned (train.zero3_init): every parameter split over the 2 ranks, rank 0 holds about half.
    part = s2["partitioned_init"]
    assert s1["partitioned_init"] is None and part["partitioned"] == part["params"] and part["held"] <= 0.51 * part["params"]
    assert s1["steps"] == prepared.cfg.train.stage1.max_steps and s1["skipped"] == {}
    # Stage 2 mixed in one reading conversation per class of the world (smoke: reading_per_class 1).
    taxonomy = json.loads((prepared.root / "taxonomy.json").read_text())
    n_classes = sum(len(dom["classes"]) for dom in taxonomy.values())
    instructions = len(json.loads((prepared.root / "instruction/instruct.json").read_text()))
    assert s2["examples"] == instructions + prepared.cfg.train.stage2.reading_per_class * n_classes

    # Stage 1: the connector alone, as LLaVA's mm_projector.bin, equal to the consolidated model's; CLIP untouched.
    one = TunaForConditionalGeneration.from_pretrained(str(d / "train/tuna/stage1/model"))
    proj = torch.load(d / "train/tuna/stage1/model/mm_projector.bin")
    assert set(proj) == {f"projector.{k}" for k in one.projector.state_dict()}
    for k, v in one.projector.state_dict().items():
        assert torch.equal(proj[f"projector.{k}"], v)
    clip = load_encoder(d / "encoder").model
    assert torch.equal(one.clip.vision_model.embeddings.patch_embedding.weight, clip.vision_model.embeddings.patch_embedding.weight)
    # Stage 2 (ZeRO-3 consolidated by zero_to_fp32): the LM moved, the word embeddings stayed frozen.
    two = TunaForConditionalGeneration.from_pretrained(str(d / "train/tuna/stage2/model"))
    assert not torch.equal(two.projector.linear_1.weight, one.projector.linear_1.weight)
    assert torch.equal(two.get_input_embeddings().weight, one.get_input_embeddings().weight)
    assert any(not torch.equal(a, b) for a, b in zip(two.language_model.model.layers.parameters(),
                                                     one.language_model.model.layers.parameters()))
    # The saved folder is self-contained: LM tokenizer, CLIP tokenizer and image processor beside the weights.
    for f in ("tokenizer.json", "preprocessor_config.json", "clip_tokenizer/tokenizer.json"):
        assert (d / "train/tuna/stage2/model" / f).is_file(), f

    client = MlflowClient(tracking_uri(prepared.cfg))
    runs = {r.info.run_name: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.run_name LIKE 'train-tuna-%'")}
    assert set(runs) == {"train-tuna-stage1", "train-tuna-stage2"}
    assert s2["registered"]["name"] == "tuna-smoke" if "registered" in s2 else s2["final_loss"] >= s2["first_loss"]
    run = runs["train-tuna-stage1"]
    assert run.info.status == "FINISHED" and run.data.params["train.stage1.lr"] == str(prepared.cfg.train.stage1.lr)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, s1["steps"] + 1))  # smoke logs every step
    assert history[-1].value == pytest.approx(s1["final_loss"], abs=1e-5)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for p in ("plots", "config") for a in client.list_artifacts(run.info.run_id, p)}
    assert {"plots/loss_curve.png", "config/deepspeed_config.json", "config/recipe.yaml"} <= arts
    assert client.list_artifacts(runs["train-tuna-stage2"].info.run_id, "model")


def test_killed_run_resumes_onto_the_uninterrupted_loss_curve(prepared) -> None:
    d = prepared.cfg.data_dir
    common = ["--stage", "1", "--variant", "tuner_off", "train.stage1.epochs=20", "train.stage1.max_steps=40",
              "train.checkpoint_every=8", "train.keep_checkpoints=10"]
    full = _tuna(*common, data_dir=d)
    assert full.returncode == 0, full.stderr[-2000:]
    log = d / "train/tuner_off/stage1/loss.jsonl"
    reference = _losses(log)
    assert len(reference) == 40

    shutil.rmtree(log.parent)  # the killed run starts from nothing, as the reference did
    proc = subprocess.Popen(_cmd(tuple(common), d), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_text().splitlines()) >= 20:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = len(_losses(log))
    assert 20 <= killed_at < 40 and not (d / "train/tuner_off/stage1/metrics.json").exists()

    resumed = _tuna(*common, "--resume", data_dir=d)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    at = re.search(r"resumed tuner_off stage 1 at step (\d+)/40", resumed.stdout)
    assert at and int(at.group(1)) % 8 == 0 and 16 <= int(at.group(1)) <= killed_at, resumed.stdout[-1500:]
    assert _losses(log) == pytest.approx(reference, abs=1e-5)

    # A checkpoint from a different config is refused in one line naming the mismatch.
    other = _tuna(*common, "--resume", "train.stage1.lr=0.01", data_dir=d)
    assert other.returncode != 0
    assert "was written by a different config" in other.stdout + other.stderr
    assert "Traceback" not in other.stdout + other.stderr


def test_a_partitioned_build_trains_the_same_loss_curve_as_a_whole_one(trained, tmp_path: Path) -> None:
    """Stage 2 on ZeRO-3 built whole on each rank (zero3_init off) reproduces the fixture's partitioned run step by step."""
    d = tmp_path / "whole"
    shutil.copytree(trained.cfg.data_dir, d, ignore=shutil.ignore_patterns("stage2", "eval", "serve"))
    done = _tuna("--stage", "2", "--variant", "tuna", "train.stage2.zero_stage=3", "train.zero3_init=false", data_dir=d)
    assert done.returncode == 0, done.stderr[-2000:]
    whole = json.loads((d / "train/tuna/stage2/metrics.json").read_text())
    assert whole["partitioned_init"] is None
    partitioned = trained.cfg.data_dir / "train/tuna/stage2/loss.jsonl"
    assert _losses(d / "train/tuna/stage2/loss.jsonl") == pytest.approx(_losses(partitioned), abs=1e-5)


def test_cached_vision_trains_the_same_loss_curve_as_pixels(trained, tmp_path: Path) -> None:
    """train.cache_vision: stage 2 on the frozen tower's outputs, encoded once and split over the two ranks,
    reproduces the fixture's loss curve (pixels every step) and says what it encoded; the refused case is one line."""
    d = tmp_path / "cached"
    shutil.copytree(trained.cfg.data_dir, d, ignore=shutil.ignore_patterns("stage2", "eval", "serve"))
    done = _tuna("--stage", "2", "--variant", "tuna", "train.stage2.zero_stage=3", "train.zero3_init=false",
                 "train.cache_vision=true", data_dir=d)
    assert done.returncode == 0, done.stderr[-2000:]
    said = re.compile(r"(\d+) training images through the frozen vision tower \(train.cache_vision\): (\d+) encoded once, "
                      r"(\d+) read from (\S+),")
    first = said.search(done.stdout + done.stderr)
    assert first and int(first[1]) == int(first[2]) > 0 and first[3] == "0", done.stdout[-2000:]
    reference = trained.cfg.data_dir / "train/tuna/stage2/loss.jsonl"
    assert _losses(d / "train/tuna/stage2/loss.jsonl") == pytest.approx(_losses(reference), abs=1e-4)
    # the next run of the stage (any variant on the same frozen tower) reads the encodings back
    again = _tuna("--stage", "2", "--variant", "tuna", "--force", "train.stage2.zero_stage=3", "train.zero3_init=false",
                  "train.cache_vision=true", data_dir=d)
    assert again.returncode == 0, again.stderr[-2000:]
    second = said.search(again.stdout + again.stderr)
    assert second and second[2] == "0" and second[3] == first[1] and Path(second[4]) == d / "train/vision", again.stdout[-2000:]
    assert _losses(d / "train/tuna/stage2/loss.jsonl") == pytest.approx(_losses(reference), abs=1e-4)
    refused = _tuna("--stage", "2", "--variant", "baseline", "train.cache_vision=true", "train.stage2.vision_lr_scale=0.1",
                    data_dir=d)
    assert refused.returncode != 0 and "Traceback" not in refused.stdout + refused.stderr
    assert "train.cache_vision: stage 2 trains the vision tower" in refused.stdout + refused.stderr


def test_length_buckets_train_the_same_loss_curve_as_whole_micro_batches(trained, tmp_path: Path) -> None:
    """train.length_buckets: each micro-batch run in up to 3 forwards of similar lengths (ZeRO-3, as the fixture's
    stage 2) pads fewer text positions and reproduces the fixture's loss curve (one forward per micro-batch)."""
    d = tmp_path / "buckets"
    shutil.copytree(trained.cfg.data_dir, d, ignore=shutil.ignore_patterns("stage2", "eval", "serve"))
    done = _tuna("--stage", "2", "--variant", "tuna", "train.stage2.zero_stage=3", "train.zero3_init=false",
                 "train.length_buckets=3", data_dir=d)
    assert done.returncode == 0, done.stderr[-2000:]
    said = re.search(r"train.length_buckets=3: the text padded to ([\d.]+)x its tokens \(whole micro-batches: ([\d.]+)x",
                     done.stdout + done.stderr)
    assert said and 1.0 <= float(said[1]) < float(said[2]), done.stdout[-2000:]
    reference = trained.cfg.data_dir / "train/tuna/stage2/loss.jsonl"
    assert _losses(d / "train/tuna/stage2/loss.jsonl") == pytest.approx(_losses(reference), abs=1e-4)
