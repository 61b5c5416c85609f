"""Training pieces without DeepSpeed processes: examples and their filtering, batches, the data order, the
learning-rate schedule, DeepSpeed config resolution and the launcher's refusals (the templates themselves:
tests/model/test_processing_tuna.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from support import SMOKE, word_tokenizer
from support import llava_record as _conv
from tuna.errors import ConfigError
from tuna.model.configuration_tuna import IMAGE_TOKEN_INDEX
from tuna.model.processing_tuna import IGNORE_INDEX
from tuna.recipe import load_recipe
from tuna.train import ds_config
from tuna.train.data import Collator, prepare
from tuna.train.engine import BatchPlan, TrainError, lr_lambda
from tuna.train.launch import check_ranks, local_command
from tuna.variants import registered_name, variant_model


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return word_tokenizer()


def test_prepare_skips_and_counts_examples_cut_before_their_answer(tok: PreTrainedTokenizerFast) -> None:
    long_q = "<image>\n" + "what " * 40
    recs = [_conv("<image>\nwhat is it?", "a zedul", image="a.png"), _conv(long_q, "No", image="b.png"),
            _conv("<image>\nwhat?", "Yes", image="c.png")]
    tags = {"a.png": [("zedul", 0.9), ("red", 0.5)], "b.png": [("red", 0.1)]}
    out = prepare(recs, tok, 2, 20, "chat", tags, num_tags=5)
    assert [e.image.name for e in out.examples] == ["a.png"]
    assert out.examples[0].tags == ["zedul", "red"]
    assert out.skipped == {"no_answer_within_max_length": 1, "no_retrieved_tags": 1}


def test_tags_follow_each_image_when_image_roots_share_file_names(tok: PreTrainedTokenizerFast) -> None:
    """LLaVA-665K's coco/ and gqa/ roots may hold files of the same name: the tags are keyed by the path under
    the common folder then, so each image gets its own; a single folder keeps plain file names."""
    from tuna.samples import image_keys

    recs = [_conv("<image>\nwhat is it?", "a zedul", image="/d/coco/train2017/1.jpg"),
            _conv("<image>\nwhat is it?", "a zenai", image="/d/gqa/images/1.jpg"), _conv("no image", "ok")]
    recs[2] = type(recs[2])(recs[2].id, None, recs[2].conversations)
    keys = image_keys([Path("/d/coco/train2017/1.jpg"), Path("/d/gqa/images/1.jpg")])
    assert sorted(keys.values()) == ["coco/train2017/1.jpg", "gqa/images/1.jpg"]
    assert image_keys([Path("/x/a.png"), Path("/x/b.png")]) == {Path("/x/a.png"): "a.png", Path("/x/b.png"): "b.png"}
    tags = {"coco/train2017/1.jpg": [("zedul", 0.9)], "gqa/images/1.jpg": [("zenai", 0.8)]}
    out = prepare(recs, tok, 2, 64, "chat", tags, num_tags=5)
    assert [e.tags for e in out.examples] == [["zedul"], ["zenai"]] and out.skipped == {"text_only": 1}


def test_collator_pads_right_and_shapes_tags(tok: PreTrainedTokenizerFast, prepared) -> None:
    from tuna.retrieval.clip import load_encoder

    enc = load_encoder(prepared.cfg.data_dir / "encoder")
    img = next((prepared.root / "alignment" / "images").glob("*.png"))
    recs = [_conv("<image>\nwhat is it?", "a zedul", image=str(img)), _conv("<image>\nwhat?", "No", image=str(img))]
    tags = {img.name: [("zedul", 0.9), ("red zedul", 0.5)]}
    ex = prepare(recs, tok, 2, 64, "chat", tags, num_tags=3).examples
    batch = Collator(tok, enc.processor, enc.tokenizer, num_tags=3, max_tag_tokens=4, use_tags=True)(ex)
    b, length = batch["input_ids"].shape
    assert b == 2 and batch["labels"].shape == (2, length) and batch["attention_mask"][1].sum() < length
    assert batch["input_ids"][1, -1] == tok.pad_token_id and batch["labels"][1, -1] == IGNORE_INDEX
    assert batch["pixel_values"].shape[:2] == (2, 3)
    assert batch["tag_input_ids"].shape[:2] == (2, 3) and batch["tag_mask"].tolist() == [[True, True, False]] * 2
    assert batch["tag_clip_input_ids"].shape[:2] == (2, 3)
    assert int(batch["tag_attention_mask"][0, 1].sum()) == 2  # "red zedul": two LM tokens


def test_batch_plan_is_seeded_disjoint_across_ranks_and_resumable() -> None:
    plan = BatchPlan(n=50, world_size=2, batch_size=4, grad_accum=2, seed=7)
    assert plan.steps_per_epoch == 3 and plan.total_steps(2, None) == 6 and plan.total_steps(2, 4) == 4
    seen = [i for m in range(2) for r in range(2) for i in plan.indices(0, m, r)]
    assert len(seen) == len(set(seen)) == 16
    again = BatchPlan(n=50, world_size=2, batch_size=4, grad_accum=2, seed=7)
    assert again.indices(4, 1, 1) == plan.indices(4, 1, 1)  # a resumed run jumps straight to its step
    assert plan.indices(3, 0, 0) != plan.indices(0, 0, 0)   # a new epoch reshuffles
    with pytest.raises(TrainError, match="cannot fill one global batch of 16"):
        BatchPlan(n=10, world_size=2, batch_size=4, grad_accum=2, seed=0)


def test_length_grouped_batches_hold_similar_lengths_each_example_once_an_epoch() -> None:
    """``group_by_length``: each global batch comes from one run of MEGA shuffled global batches sorted by length,
    so its examples have similar lengths; an epoch still visits distinct examples, seeded and resumable."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 200, size=2000).tolist()
    plain = BatchPlan(n=2000, world_size=2, batch_size=4, grad_accum=2, seed=3)
    grouped = BatchPlan(n=2000, world_size=2, batch_size=4, grad_accum=2, seed=3, lengths=lengths)

    def batch(plan: BatchPlan, step: int) -> list[int]:
        return [i for m in range(2) for r in range(2) for i in plan.indices(step, m, r)]

    def padding(plan: BatchPlan) -> float:   # padded tokens / real tokens over an epoch
        rows = [[lengths[i] for i in batch(plan, s)] for s in range(plan.steps_per_epoch)]
        return sum(max(r) * len(r) for r in rows) / sum(map(sum, rows))

    epoch = [i for s in range(grouped.steps_per_epoch) for i in batch(grouped, s)]
    assert len(epoch) == len(set(epoch)) == grouped.steps_per_epoch * 16
    assert padding(grouped) < 1.05 < 1.5 < padding(plain)
    assert batch(grouped, 7) != batch(grouped, 7 + grouped.steps_per_epoch)          # a new epoch regroups
    again = BatchPlan(n=2000, world_size=2, batch_size=4, grad_accum=2, seed=3, lengths=lengths)
    assert again.indices(130, 1, 0) == grouped.indices(130, 1, 0)                    # resumable
    with pytest.raises(TrainError, match="3 lengths for 2000 examples"):
        BatchPlan(n=2000, world_size=2, batch_size=4, grad_accum=2, seed=3, lengths=[1, 2, 3])


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    f = lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=0.02) and f(100) == pytest.approx(0.0)


def test_deepspeed_config_resolves_every_auto_field() -> None:
    cfg = load_recipe(SMOKE, ["train.stage2.zero_stage=3", "train.stage2.grad_accum=2"])
    ds = ds_config.resolve(cfg, 2, world_size=2, hidden_size=32)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_batch_size"] == cfg.train.stage2.batch_size * 2 * 2
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == cfg.train.gradient_clipping
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage3_param_persistence_threshold"] == 320
    assert "auto" not in json.dumps(ds)
    assert ds_config.resolve(cfg, 1, world_size=2)["zero_optimization"]["stage"] == cfg.train.stage1.zero_stage


def test_deepspeed_config_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 is refused by DeepSpeed on CPU"):
        ds_config.resolve(load_recipe(SMOKE, ["train.precision=fp16"]), 1, 2)
    custom = tmp_path / "ds.json"
    custom.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_batch_size": "auto"}))
    with pytest.raises(ConfigError, match="zero_stage is 2 but .* sets zero_optimization.stage 3"):
        ds_config.resolve(load_recipe(SMOKE, [f"train.deepspeed_config={custom}"]), 1, 2)
    custom.write_text(json.dumps({"zero_optimization": {"stage": 2, "sub_group_size": "auto"}}))
    with pytest.raises(ConfigError, match="zero_optimization.sub_group_size stayed \"auto\""):
        ds_config.resolve(load_recipe(SMOKE, [f"train.deepspeed_config={custom}"]), 1, 2)
    custom.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        ds_config.resolve(load_recipe(SMOKE, [f"train.deepspeed_config={custom}"]), 1, 2)


def test_more_ranks_than_cores_is_refused_with_the_setting() -> None:
    if torch.cuda.is_available():
        pytest.skip("the CPU-core check applies to CPU machines")
    with pytest.raises(TrainError, match=r"train.ranks=512 asks for more CPU ranks than the \d+ cores"):
        check_ranks(load_recipe(SMOKE, ["train.ranks=512"]))


def test_a_gpu_recipe_on_a_machine_without_gpus_is_one_line_before_any_rank(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuna.cli import main

    if torch.cuda.is_available():
        pytest.skip("the no-GPU check applies to CPU machines")
    with pytest.raises(TrainError) as err:
        check_ranks(load_recipe("configs/llava7b.yaml", [f"run.data_dir={tmp_path}"]))
    assert str(err.value) == ("llava7b: cluster.gpus_per_node=8 asks for GPU nodes but this machine has no CUDA GPU; "
                              "submit it to a cluster (--launcher trainjob) or train a CPU recipe (configs/smoke.yaml, "
                              "configs/mini.yaml)")
    assert main(["train", "--config", "configs/llava7b.yaml", "--stage", "1", f"run.data_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == f"tuna train: error: {err.value}"
    assert not (tmp_path / "train").exists()


def test_local_command_runs_the_worker_module_on_n_ranks() -> None:
    cmd = local_command(Path("r.yaml"), 2, "baseline", 2, True, 29501)
    assert cmd[1:4] == ["-u", "-m", "deepspeed.launcher.launch"]
    world = next(a.split("=", 1)[1] for a in cmd if a.startswith("--world_info="))
    assert json.loads(base64.urlsafe_b64decode(world)) == {"localhost": [0, 1]}   # what the deepspeed runner passes
    assert "--module" in cmd and cmd[cmd.index("--log_level=info") + 1] == "tuna.train.worker"
    assert cmd[-5:] == ["--stage", "2", "--variant", "baseline", "--resume"]


def test_variants_and_registry_names() -> None:
    cfg = load_recipe(SMOKE)
    assert variant_model(cfg, "baseline")["tag_mode"] == "none" and variant_model(cfg, "tuner_off")["tuner"] is False
    assert variant_model(cfg, "tuna")["tag_mode"] == cfg.model.tag_mode
    with pytest.raises(ConfigError, match="unknown variant 'llava'"):
        variant_model(cfg, "llava")
    mini = load_recipe(SMOKE, ["track.registered_model=tuna-mini"])
    assert registered_name(mini, "tuna") == "tuna-mini" and registered_name(mini, "baseline") == "llava-mini"
    assert registered_name(mini, "tuner_off") == "tuna-mini-tuner-off"


def test_cli_dry_run_prints_a_validated_cluster_job(capsys: pytest.CaptureFixture[str]) -> None:
    from support import CONFIGS
    from tuna.cli import main

    assert main(["train", "--config", str(CONFIGS / "llava7b.yaml"), "--stage", "2", "--launcher", "pytorchjob",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kind: PyTorchJob" in out and "tuna.train.worker" in out and "train.stage2.zero_stage=3" in out


def test_cli_refuses_more_ranks_than_cores_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tuna.cli import main

    if torch.cuda.is_available():
        pytest.skip("the CPU-core check applies to CPU machines")
    assert main(["train", "--config", str(SMOKE), "--stage", "1", "train.ranks=512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.ranks=512" in err[0]


def test_param_groups_give_the_lm_its_own_learning_rate() -> None:
    from tuna.train.engine import StageInputs

    connector, lm_a, lm_b = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    inputs = StageInputs(None, None, [connector, lm_a, lm_b], [], {}, None, lm_params=[lm_a, lm_b])
    groups = inputs.param_groups(1e-3, 0.25)
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert groups[0]["params"][0] is connector and groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(2.5e-4)
    no_lm = StageInputs(None, None, [connector], [], {}, None).param_groups(1e-3, 0.25)
    assert len(no_lm) == 1 and no_lm[0]["params"] == [connector]


def test_image_dropout_shows_a_seeded_share_of_tagged_examples_a_grey_image() -> None:
    from tuna.train.data import DataError, Example, drop_images

    blank = Path("blank-64.png")
    examples = [Example(f"row-{i}", Path(f"{i}.png"), [1], [1], ["a tag"] if i % 4 else []) for i in range(2000)]
    out = drop_images(examples, 0.3, seed=0, blank=blank)
    dropped = {ex.id for ex in out if ex.image == blank}
    tagged = [ex for ex in examples if ex.tags]
    assert 0.27 < len(dropped) / len(tagged) < 0.33
    assert all(ex.tags for ex in out if ex.id in dropped)                            # never both tags and image gone
    assert [ex.tags for ex in out] == [ex.tags for ex in examples] and examples[1].image == Path("1.png")
    assert {ex.id for ex in drop_images(examples[::-1], 0.3, seed=0, blank=blank) if ex.image == blank} == dropped
    assert drop_images(examples, 0.0, seed=0, blank=blank) == examples
    with pytest.raises(DataError, match="image dropout"):
        drop_images(examples, 1.0, seed=0, blank=blank)


def test_tag_dropout_removes_the_tags_of_a_seeded_share_of_examples() -> None:
    from tuna.train.data import Example, drop_tags

    examples = [Example(f"row-{i}", Path(f"{i}.png"), [1], [1], ["a tag", "b tag"]) for i in range(2000)]
    out = drop_tags(examples, 0.3, seed=0)
    dropped = {ex.id for ex in out if not ex.tags}
    assert 0.27 < len(dropped) / len(examples) < 0.33
    assert all(ex.tags == ["a tag", "b tag"] for ex in out if ex.id not in dropped)
    assert [ex.image for ex in out] == [ex.image for ex in examples] and examples[0].tags   # a copy, inputs untouched
    assert {ex.id for ex in drop_tags(examples[::-1], 0.3, seed=0) if not ex.tags} == dropped   # order-free
    assert {ex.id for ex in drop_tags(examples, 0.3, seed=1) if not ex.tags} != dropped
    assert drop_tags(examples, 0.0, seed=0) == examples


@pytest.mark.parametrize("override", ["tag_dropout=0.3", "reading_describe=0.3", "group_by_length=true", "reading_scenes=5",
                                      "reading_other_coarse=0.5", "image_dropout=0.2", "novel_names=0.2",
                                      "random_tags=0.2", "existence_tags=0.2", "init_from=baseline"])
def test_later_stage_keys_keep_older_fingerprints_at_their_defaults(override: str) -> None:
    from tuna.recipe.loader import section_fingerprint

    cfg = load_recipe(SMOKE)
    fields = dataclasses.asdict(cfg.train.stage2)
    for later in ("tag_dropout", "reading_describe", "group_by_length", "reading_scenes", "reading_other_coarse",
                  "image_dropout", "novel_names", "novel_decoys", "random_tags", "existence_tags", "init_from", "init_epochs", "init_lm_lr_scale"):
        del fields[later]   # what section_fingerprint(cfg.train.stage2) hashed before the fields existed
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert section_fingerprint(cfg.train.stage2) == before
    assert section_fingerprint(load_recipe(SMOKE, [f"train.stage2.{override}"]).train.stage2) != before


@pytest.mark.parametrize("override, name", [("train.stage2.lm_lr_scale=-1", "lm_lr_scale"),
                                            ("lm.reading_docs_per_class=-3", "reading_docs_per_class"),
                                            ("train.stage2.tag_dropout=1", "tag_dropout"),
                                            ("train.stage2.reading_describe=1.2", "reading_describe"),
                                            ("train.stage2.reading_scenes=-1", "reading_scenes"),
                                            ("train.stage2.reading_other_coarse=1.5", "reading_other_coarse"),
                                            ("train.stage2.image_dropout=1", "image_dropout"),
                                            ("train.stage1.group_by_length=3", "group_by_length")])
def test_lm_learning_rate_scale_and_reading_documents_are_validated(override: str, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_recipe(SMOKE, [override])


def test_reading_examples_are_blank_image_conversations_with_their_tags(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    from PIL import Image

    from tuna.train.data import reading_examples, write_blank_image
    from tuna.world.reading import ReadingSample

    blank = write_blank_image(tmp_path / "reading" / "blank-32.png", 32)
    assert Image.open(blank).size == (32, 32) and Image.open(blank).getpixel((5, 5)) == (128, 128, 128)
    samples = [ReadingSample(["red zedul", "zedul"], "what is it?", "a zedul", "zedul"),
               ReadingSample(["zedul"] * 2, "what is it? " * 40, "zedul", "zedul")]  # too long: dropped
    prepared = reading_examples(samples, [blank, blank], tok, max_length=40, system="chat")
    assert prepared.skipped == {"reading_too_long": 1} and prepared.longest > 40
    assert len(prepared.examples) == 1
    assert reading_examples(samples, [blank, blank], tok, max_length=prepared.longest, system="chat").skipped == {}
    ex = prepared.examples[0]
    assert ex.image == blank and ex.tags == ["red zedul", "zedul"] and IMAGE_TOKEN_INDEX in ex.input_ids
    answer = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(answer) == ["a", "zedul", "</s>"]


def _instruction_objects(world: Path) -> tuple[dict[str, int], dict[int, list[str]]]:
    """file name -> image id, and image id -> its objects' class names, of a world's instruction images."""
    inst = json.loads((world / "instruction" / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, list[str]] = {}
    for a in inst["annotations"]:
        objects.setdefault(a["image_id"], []).append(cats[a["category_id"]])
    return {im["file_name"]: im["id"] for im in inst["images"]}, objects


@pytest.mark.parametrize("mode", ["scene", "blank", "own"])
def test_stage2_reading_conversations_from_the_world(tok: PreTrainedTokenizerFast, prepared, mode: str) -> None:
    """Reading rows sit on a training scene of the answer's coarse class (scene), of the answer's own class
    when it has one (own), or on a blank image."""
    from tuna.train.readings import reading_rows

    cfg = load_recipe(SMOKE, [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=2",
                              f"train.stage2.reading_image={mode}", "train.stage2.reading_existence=0.5",
                              "train.stage2.reading_attrseek=0.5", "train.stage2.reading_describe=0.3",
                              "train.stage2.max_length=256"])  # ATTRSEEK: ~195 tokens
    taxonomy = json.loads((prepared.root / "taxonomy.json").read_text())
    classes = {c["name"]: c for dom in taxonomy.values() for c in dom["classes"]}
    file_id, objects = _instruction_objects(prepared.root)
    rows = reading_rows(cfg, tok, cfg.train.stage2).examples
    assert len(rows) == 2 * len(classes)
    domain_a_coarse = {classes[n]["coarse"] for o in objects.values() if len(o) == 1 for n in o}
    single_classes = {o[0] for o in objects.values() if len(o) == 1}
    for ex in rows:
        assert len(ex.tags) == cfg.model.num_tags and ex.image.is_file()
        name = max(classes, key=lambda n: sum(t.split()[-1] == n for t in ex.tags))   # the tags' majority
        if mode == "blank":
            assert ex.image.name == f"blank-{cfg.world.image_size}.png"
            continue
        shown = objects[file_id[ex.image.name]]
        assert len(shown) == 1                                                      # a single-object scene
        asked = re.search(r"(?:Is there an?|contain an?) (\w+)", tok.decode([t for t in ex.input_ids if t >= 0]))
        if asked and tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]).startswith("No"):
            assert shown[0] != asked[1]               # a "No" never asks about the object the image shows
        if mode == "own" and name in single_classes:
            assert shown[0] == name                                                 # the named class itself
        elif classes[name]["coarse"] in domain_a_coarse:
            assert classes[shown[0]]["coarse"] == classes[name]["coarse"]


def test_reading_other_coarse_shows_a_scene_of_another_kind_and_needs_scenes(tok: PreTrainedTokenizerFast, prepared) -> None:
    """train.stage2.reading_other_coarse=1: every reading row's image shows a class of another coarse class than the
    one its tags (and answer) name; at 0 the rows are those of a recipe without the key; with blank images it is refused."""
    from tuna.train.readings import reading_rows

    base = [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=3", "train.stage2.reading_image=scene"]
    taxonomy = json.loads((prepared.root / "taxonomy.json").read_text())
    classes = {c["name"]: c for dom in taxonomy.values() for c in dom["classes"]}
    file_id, objects = _instruction_objects(prepared.root)
    cfg = load_recipe(SMOKE, [*base, "train.stage2.reading_other_coarse=1"])
    rows = reading_rows(cfg, tok, cfg.train.stage2).examples
    assert len(rows) == 3 * len(classes)
    for ex in rows:
        name = max(classes, key=lambda n: sum(t.split()[-1] == n for t in ex.tags))   # the tags' majority
        shown = objects[file_id[ex.image.name]]
        assert len(shown) == 1 and classes[shown[0]]["coarse"] != classes[name]["coarse"]
    zero = load_recipe(SMOKE, [*base, "train.stage2.reading_other_coarse=0"])
    plain = load_recipe(SMOKE, base)
    assert [(e.image, e.input_ids) for e in reading_rows(zero, tok, zero.train.stage2).examples] == \
        [(e.image, e.input_ids) for e in reading_rows(plain, tok, plain.train.stage2).examples]
    with pytest.raises(ConfigError, match="reading_other_coarse.*reading_image"):
        load_recipe(SMOKE, ["train.stage2.reading_image=blank", "train.stage2.reading_other_coarse=0.2"])


def test_stage2_reading_conversations_under_region_tags(tok: PreTrainedTokenizerFast, prepared) -> None:
    """model.region_grid: the reading rows carry the whole image's k tags (their class the majority) and one tag per
    cell after them, as region retrieval fills the slots."""
    from collections import Counter

    from tuna.train.readings import reading_rows

    cfg = load_recipe(SMOKE, [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=3",
                              "model.region_grid=2", "model.num_tags=9"])
    rows = reading_rows(cfg, tok, cfg.train.stage2).examples
    assert rows and all(len(ex.tags) == 9 for ex in rows)
    for ex in rows:
        first = Counter(t.split()[-1] for t in ex.tags[:5]).most_common(1)[0][1]
        assert first >= 3                                    # a strict majority of the whole image's 5


def test_stage2_scene_readings_describe_multi_object_scenes_with_swapped_names(prepared) -> None:
    """train.stage2.reading_scenes: the world's multi-object training scenes, described with look-alike names that
    the tags carry (none of the scene's own classes), added to TUNA's stage 2 only."""
    from tuna.train.engine import _examples

    over = [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=0", "train.stage2.max_length=256"]
    world_tok = AutoTokenizer.from_pretrained(Path(prepared.cfg.data_dir) / "lm")   # the world LM's: class names are words
    base, _ = _examples(load_recipe(SMOKE, over), "tuna", 2, world_tok, 0, lambda: None, lambda s: None)
    cfg = load_recipe(SMOKE, [*over, "train.stage2.reading_scenes=7"])
    rows, skipped = _examples(cfg, "tuna", 2, world_tok, 0, lambda: None, lambda s: None)
    assert not skipped.get("scene_reading_too_long") and len(rows) == len(base) + 7
    file_id, objects = _instruction_objects(prepared.root)
    for ex in rows[len(base):]:
        shown = set(objects[file_id[ex.image.name]])
        answer = world_tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])
        named = set(re.findall(r"There is an? (?:\w+ )*?(\w+), a kind of", answer))
        assert len(objects[file_id[ex.image.name]]) >= 2 and named - shown   # a class without a free sibling keeps its name
        assert named <= {t.split()[-1] for t in ex.tags} and len(ex.tags) == cfg.model.num_tags
    baseline, _ = _examples(cfg, "baseline", 2, world_tok, 0, lambda: None, lambda s: None)
    assert len(baseline) == len(base)                                        # no tags, no scene readings


def test_stage2_image_dropout_shows_tagged_data_rows_a_grey_image_and_leaves_the_baseline(prepared) -> None:
    """train.stage2.image_dropout: a share of TUNA's data rows trains on the grey image (a real file) with their
    tags; the tags-free baseline keeps every image."""
    from tuna.train.engine import _examples

    over = [f"run.data_dir={prepared.cfg.data_dir}", "train.stage2.reading_per_class=0"]
    world_tok = AutoTokenizer.from_pretrained(Path(prepared.cfg.data_dir) / "lm")
    base, _ = _examples(load_recipe(SMOKE, over), "tuna", 2, world_tok, 0, lambda: None, lambda s: None)
    cfg = load_recipe(SMOKE, [*over, "train.stage2.image_dropout=0.5"])
    rows, _ = _examples(cfg, "tuna", 2, world_tok, 0, lambda: None, lambda s: None)
    grey = [r for r in rows if r.image.name.startswith("blank-")]
    assert len(rows) == len(base) and 0 < len(grey) < len(rows)
    assert all(r.tags and r.image.is_file() for r in grey)
    assert [(r.id, r.tags, r.input_ids) for r in rows] == [(r.id, r.tags, r.input_ids) for r in base]
    baseline, _ = _examples(cfg, "baseline", 2, world_tok, 0, lambda: None, lambda s: None)
    assert baseline and not any(r.image.name.startswith("blank-") for r in baseline)


def test_a_trained_vision_tower_is_refused_for_tag_variants(prepared) -> None:
    """Serving retrieves with the model's own image embedding against keys from the frozen encoder, so only the
    baseline may train its tower; its optimizer group gets lr x vision_lr_scale."""
    from tuna.train.engine import StageInputs, prepare_stage

    cfg = load_recipe(SMOKE, [f"run.data_dir={prepared.cfg.data_dir}", "train.stage1.vision_lr_scale=0.5"])
    with pytest.raises(TrainError, match=r"train.stage1.vision_lr_scale=0.5 would train the vision tower of 'tuna'"):
        prepare_stage(cfg, "tuna", 1)
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    groups = StageInputs(None, None, [a, b, c], [], {}, None, lm_params=[b], vision_params=[c]).param_groups(1e-3, 1.0, 0.5)
    assert [(g["params"], g["lr"]) for g in groups] == [([a], 1e-3), ([b], 1e-3), ([c], 5e-4)]


# ----------------------------------------------------------------------------- device placement (issue 16, item 1)


def test_optimizer_step_moves_each_batch_and_the_loss_reduction_to_the_engines_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU node the engine's device is cuda:<local rank>: a batch left on the CPU or a CPU tensor handed to
    NCCL's all-reduce fails there. "meta" stands in for that device here: anything left behind stays on "cpu"."""
    from types import SimpleNamespace

    from tuna.train import engine as engine_mod

    seen: list[set[str]] = []
    reduced: list[tuple[float, str, int]] = []

    class Engine:
        device = torch.device("meta")

        def __call__(self, **batch: Any) -> Any:
            seen.append({str(v.device) for v in batch.values() if isinstance(v, torch.Tensor)})
            assert batch["note"] == "kept"
            return SimpleNamespace(loss=torch.tensor(2.0))

        def backward(self, loss: torch.Tensor) -> None: ...

        def step(self) -> None: ...

    monkeypatch.setattr(engine_mod, "mean_over_ranks", lambda v, d, w: reduced.append((v, str(d), w)) or v / w)
    collate = lambda rows: {"input_ids": torch.zeros(len(rows), 3, dtype=torch.long),  # noqa: E731
                            "pixel_values": torch.zeros(len(rows), 3, 4, 4), "note": "kept"}
    plan = BatchPlan(n=8, world_size=2, batch_size=2, grad_accum=2, seed=0)
    loss = engine_mod.optimizer_step(Engine(), collate, list(range(8)), plan, step=0, rank=1)
    assert seen == [{"meta"}, {"meta"}] and reduced == [(2.0, "meta", 2)] and loss == 1.0


def test_to_device_moves_tensors_only() -> None:
    from tuna.train.engine import to_device

    moved = to_device({"ids": torch.ones(2, dtype=torch.long), "tags": ["a"], "n": 3}, "meta")
    assert moved["ids"].device.type == "meta" and moved["tags"] == ["a"] and moved["n"] == 3


def test_mean_over_ranks_all_reduces_on_the_given_device(tmp_path: Path) -> None:
    import torch.distributed as dist

    from tuna.train.engine import mean_over_ranks

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert mean_over_ranks(3.0, "cpu", 2) == 1.5  # one rank holding 3.0, averaged as over 2 ranks
    finally:
        dist.destroy_process_group()


def test_each_nodes_local_rank_zero_builds_first_and_every_rank_meets_the_barrier_once() -> None:
    from tuna.train.build import local_rank_zero_first

    for local_rank, order in ((0, ["build", "barrier"]), (1, ["barrier", "build"]), (7, ["barrier", "build"])):
        seen: list[str] = []
        assert local_rank_zero_first(local_rank, lambda s=seen: s.append("barrier"), lambda s=seen: s.append("build") or 5) == 5
        assert seen == order
    seen = []

    def fail() -> None:
        raise OSError("hub unreachable")

    with pytest.raises(OSError):
        local_rank_zero_first(0, lambda: seen.append("barrier"), fail)
    assert seen == ["barrier"]  # the other ranks are released (and fail on their own), never left waiting


def test_region_tags_make_a_tag_variants_training_stale_and_leave_the_baseline_alone() -> None:
    from tuna.train.freshness import fingerprint

    plain, regions = load_recipe(SMOKE, ["model.num_tags=9"]), load_recipe(SMOKE, ["model.num_tags=9", "model.region_grid=2"])
    assert fingerprint(plain, "tuna", 2, 2) != fingerprint(regions, "tuna", 2, 2)
    assert fingerprint(plain, "tuner_off", 1, 2) != fingerprint(regions, "tuner_off", 1, 2)
    assert fingerprint(plain, "baseline", 2, 2) == fingerprint(regions, "baseline", 2, 2)   # it retrieves nothing


class _Tower:
    """encode_image of a frozen tower: patch features and an image feature from each image's pixels."""

    calls = 0

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _Tower.calls += 1
        return pixels.reshape(len(pixels), 2, -1) * 2, pixels.reshape(len(pixels), -1).sum(1, keepdim=True)


def test_cache_vision_encodes_each_image_once_split_over_the_ranks() -> None:
    """train.cache_vision: rank r encodes images r::world in batches; the exchange gives every rank all of them;
    a batch stacks the cached outputs in the batch's order, in the training precision's dtype."""
    from tuna.train.vision_cache import batch_outputs, encode_all

    images = [Path(f"img{i}.png") for i in range(5)]
    pixels = {p: torch.full((4,), float(i)) for i, p in enumerate(images)}

    def read(paths: list[Path]) -> torch.Tensor:
        return torch.stack([pixels[p] for p in paths])

    sent: list[dict[Path, Any]] = []

    def as_rank_1(obj: dict[Path, Any]) -> list[dict[Path, Any]]:   # what rank 0 would send, stubbed
        sent.append(obj)
        return [{p: (torch.zeros(2, 2), torch.zeros(1)) for p in images[0::2]}, obj]

    encode_all(_Tower(), read, images, 1, 2, as_rank_1, torch.bfloat16, batch_size=2)
    assert sorted(sent[0]) == images[1::2]                  # rank 1 encoded only its share
    both = encode_all(_Tower(), read, images, 0, 2, lambda obj: [obj, sent[0]], torch.bfloat16, batch_size=2)
    assert sorted(both) == images
    patches, features = batch_outputs(both, [images[3], images[0]])
    assert patches.dtype == features.dtype == torch.bfloat16
    assert patches.shape == (2, 2, 2) and torch.equal(features[:, 0], torch.tensor([12.0, 0.0], dtype=torch.bfloat16))
    with pytest.raises(TrainError, match=r"2 images were not encoded \(first: img1.png\)"):
        encode_all(_Tower(), read, images, 0, 2, lambda obj: [obj, {}], batch_size=2)   # a rank sent nothing back
    _Tower.calls = 0
    encode_all(_Tower(), read, images, 0, 1, lambda obj: [obj], batch_size=2)
    assert _Tower.calls == 3   # 5 images in batches of 2, each once


def test_vision_store_keeps_encodings_while_their_images_and_tower_are_unchanged(tmp_path: Path) -> None:
    """train.cache_vision's store: encodings read back as written; an image rewritten since is dropped (re-encoded);
    the key moves with the tower's weights and the visual settings; old stores are pruned; a damaged one is one line."""
    import os
    from types import SimpleNamespace

    from tuna.train.vision_cache import load_store, save_store, tower_key

    images = [tmp_path / f"img{i}.png" for i in range(3)]
    for i, p in enumerate(images):
        p.write_bytes(bytes([i]) * 10)
    encoded = {p: (torch.full((2, 4), float(i)), torch.full((3,), -float(i))) for i, p in enumerate(images)}
    store = tmp_path / "vision" / "k1.pt"
    save_store(store, encoded)
    back = load_store(store)
    assert sorted(back) == images and all(torch.equal(back[p][0], encoded[p][0]) and torch.equal(back[p][1], encoded[p][1])
                                          for p in images)
    images[1].write_bytes(b"changed")
    assert sorted(load_store(store)) == [images[0], images[2]]
    assert load_store(tmp_path / "vision" / "absent.pt") == {}

    tower = torch.nn.Linear(4, 4)
    model = SimpleNamespace(config=SimpleNamespace(vision_feature_layer=-1, vision_feature_select_strategy="full",
                                                   vision_feature_pool=2, vision_crops=3),
                            clip=SimpleNamespace(vision_model=tower, visual_projection=torch.nn.Linear(4, 2)))
    key = tower_key(model, torch.float32)
    assert key == tower_key(model, torch.float32) and key != tower_key(model, torch.bfloat16)
    model.config.vision_crops = 0
    assert tower_key(model, torch.float32) != key
    model.config.vision_crops = 3
    with torch.no_grad():
        tower.weight[0, 0] += 1e-3
    assert tower_key(model, torch.float32) != key

    os.utime(store, ns=(10**9, 10**9))
    for i in range(2, 7):
        save_store(tmp_path / "vision" / f"k{i}.pt", encoded)
        os.utime(tmp_path / "vision" / f"k{i}.pt", ns=(i * 10**9, i * 10**9))
    save_store(tmp_path / "vision" / "k7.pt", encoded, keep=4)
    assert sorted(p.name for p in (tmp_path / "vision").glob("*.pt")) == ["k4.pt", "k5.pt", "k6.pt", "k7.pt"]
    (tmp_path / "vision" / "k7.pt").write_bytes(b"not a torch file")
    with pytest.raises(TrainError, match=r"vision store .*k7.pt is unreadable .*delete it") as info:
        load_store(tmp_path / "vision" / "k7.pt")
    assert "\n" not in str(info.value)


def test_cache_vision_is_refused_where_the_towers_outputs_change_or_are_partitioned() -> None:
    from tuna.train.vision_cache import check_cacheable

    with pytest.raises(TrainError, match=r"stage 2 trains the vision tower \(train.stage2.vision_lr_scale=0.1\)"):
        check_cacheable(2, 0.1, None)
    with pytest.raises(TrainError, match=r"built partitioned \(train.zero3_init\).*train.zero3_init=false"):
        check_cacheable(2, 0.0, {"held": 1, "params": 2})
    check_cacheable(1, 0.0, None)
    with pytest.raises(ConfigError, match="cache_vision"):
        load_recipe(SMOKE, ["train.cache_vision=maybe"])


@pytest.mark.parametrize("override", ["train.stage2.reading_scenes=50", "train.stage2.reading_describe=0.2",
                                      "train.stage2.tag_dropout=0.1", "train.stage2.reading_other_coarse=0.3",
                                      "train.stage2.image_dropout=0.2", "train.stage2.novel_names=0.2",
                                      "train.stage2.random_tags=0.2", "train.stage2.existence_tags=0.2",
                                      "train.stage2.init_from=baseline"])
def test_tag_only_stage_settings_make_a_tag_variant_stale_and_leave_the_baseline_alone(override: str) -> None:
    from tuna.train.freshness import fingerprint

    plain, changed = load_recipe(SMOKE), load_recipe(SMOKE, [override])
    assert fingerprint(plain, "tuna", 2, 2) != fingerprint(changed, "tuna", 2, 2)
    assert fingerprint(plain, "baseline", 2, 2) == fingerprint(changed, "baseline", 2, 2)   # it trains on no tags
    assert fingerprint(plain, "baseline", 2, 2) != fingerprint(load_recipe(SMOKE, ["train.stage2.lr=0.0009"]), "baseline", 2, 2)


@pytest.mark.parametrize("setting", ["reading_per_class", "reading_scenes"])
def test_reading_rows_without_the_worlds_files_name_the_setting_and_both_fixes(setting: str, tmp_path: Path) -> None:
    from tuna.train.readings import reading_rows, scene_rows

    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", "train.stage2.reading_image=scene", f"train.stage2.{setting}=5"])
    with pytest.raises(TrainError) as info:
        reading_rows(cfg, None, cfg.train.stage2) if setting == "reading_per_class" else scene_rows(cfg, [], None, cfg.train.stage2)
    msg = str(info.value)
    assert "\n" not in msg and f"train.stage2.{setting} needs the world's taxonomy" in msg
    assert "run `tuna world` first" in msg and f"train.stage2.{setting}=0" in msg and str(tmp_path) in msg


def test_tuner_order_and_rank_prior_retrain_only_the_variants_whose_tuner_weighs_tags() -> None:
    from tuna.train.freshness import fingerprint
    from tuna.variants import TUNER_KEYS, fingerprint_settings, variant_model

    plain = load_recipe(SMOKE)
    assert not set(fingerprint_settings(variant_model(plain, "tuna"))) & set(TUNER_KEYS)   # the fingerprints before the keys
    for key in ("model.tuner_order=true", "model.tuner_rank_prior=0.02"):
        tuned = load_recipe(SMOKE, [key])
        assert fingerprint(plain, "tuna", 1, 2) != fingerprint(tuned, "tuna", 1, 2)
        for variant in ("baseline", "tuner_off"):   # no tuner weighs their tags
            assert fingerprint(plain, variant, 2, 2) == fingerprint(tuned, variant, 2, 2)
    with pytest.raises(ConfigError, match="tuner_rank_prior"):
        load_recipe(SMOKE, ["model.tuner_rank_prior=2"])


def test_tag_position_retrains_the_tag_variants_only() -> None:
    from tuna.train.freshness import fingerprint
    from tuna.variants import TAG_KEYS, fingerprint_settings, variant_model

    plain, moved = load_recipe(SMOKE), load_recipe(SMOKE, ["model.tag_position=before"])
    assert not set(fingerprint_settings(variant_model(plain, "tuna"))) & set(TAG_KEYS)   # the fingerprints before the key
    for variant in ("tuna", "tuner_off", "captions", "random"):
        assert fingerprint(plain, variant, 1, 2) != fingerprint(moved, variant, 1, 2)
    assert fingerprint(plain, "baseline", 2, 2) == fingerprint(moved, "baseline", 2, 2)   # no tags to move
    with pytest.raises(ConfigError, match="tag_position"):
        load_recipe(SMOKE, ["model.tag_position=middle"])
