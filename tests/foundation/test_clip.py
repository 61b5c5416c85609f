"""The CLIP encoder on a smoke world: train, save/load round trip, embeddings, fingerprints, quarantine, errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from support import DAMAGE_KIND, quiet  # noqa: E402
from tuna.cli import main
from tuna.errors import ConfigError, TunaError
from tuna.foundation import clip_train
from tuna.foundation.clip import PROMPT, evaluate_zero_shot, is_up_to_date, train_encoder, zero_shot_splits
from tuna.layout import encoder_path
from tuna.recipe import load_recipe
from tuna.retrieval.clip import ClipEncoder, EncoderUnavailable, load_encoder

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
KIND = DAMAGE_KIND
_quiet = quiet


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A smoke world, an encoder trained on it with seed 0, and one trained on the same world with seed 1."""
    from tuna.world.generate import generate_world

    root = tmp_path_factory.mktemp("encoder")
    cfg = load_recipe(SMOKE, [f"run.data_dir={root / 'seed0'}"])
    world = generate_world(cfg, progress=False, log=_quiet)
    manifest = train_encoder(cfg, progress=False, log=_quiet)
    cfg1 = load_recipe(SMOKE, [f"run.data_dir={root / 'seed1'}", "run.seed=1"])
    shutil.copytree(root / "seed0" / "world", root / "seed1" / "world")
    manifest1 = train_encoder(cfg1, progress=False, log=_quiet)
    return {"cfg": cfg, "world": world, "manifest": manifest, "manifest1": manifest1, "root": root,
            "path": Path(encoder_path(cfg))}


@pytest.fixture(scope="module")
def encoder(trained: dict) -> ClipEncoder:
    return load_encoder(trained["path"])


def _finer_images(trained: dict, split: str = "ood", n: int = 6) -> list[Image.Image]:
    folder = trained["path"].parent / "world" / "eval" / "finer" / split / "images"
    return [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())[:n]]


def test_training_writes_model_tokenizer_processor_manifest_metrics(trained: dict) -> None:
    path, manifest = trained["path"], trained["manifest"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "manifest.json", "metrics.json", "quarantine.jsonl"):
        assert (path / name).is_file(), name
    assert not list(path.parent.glob(".encoder.tmp-*")), "the temporary folder is renamed into place"
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert len(manifest["encoder_hash"]) == 64 and manifest["fingerprint"] == manifest["encoder_hash"][:16]
    assert len(manifest["corpus_hash"]) == 64
    assert manifest["dim"] == trained["cfg"].encoder.projection_dim
    assert manifest["loss"]["steps"] >= 1 and manifest["loss"]["per_epoch"]
    metrics = json.loads((path / "metrics.json").read_text())
    for split in ("id", "ood", "b"):
        assert 0.0 <= metrics[split]["top1"] <= metrics[split]["top5"] <= 1.0
        assert metrics[split]["n"] == trained["world"]["counts"][f"finer_{split}"]
    assert is_up_to_date(trained["cfg"])


def test_save_load_round_trip_gives_identical_embeddings(trained: dict, encoder: ClipEncoder, tmp_path: Path) -> None:
    images = _finer_images(trained)
    texts = ["a photo of a thing.", "a small red striped object on a textured background"]
    encoder.model.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    encoder.processor.save_pretrained(tmp_path)
    again = load_encoder(str(tmp_path))
    assert again.fingerprint == encoder.fingerprint
    assert np.array_equal(again.embed_images(images), encoder.embed_images(images))
    assert np.array_equal(again.embed_texts(texts), encoder.embed_texts(texts))


def test_embeddings_are_unit_norm_float32_of_the_projection_size(trained: dict, encoder: ClipEncoder) -> None:
    images = _finer_images(trained, "b", 5)
    img = encoder.embed_images(images, batch_size=2)
    txt = encoder.embed_texts(["a photo of a thing."] * 3, batch_size=2)
    for emb, n in ((img, 5), (txt, 3)):
        assert emb.shape == (n, encoder.dim) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert encoder.embed_images([]).shape == (0, encoder.dim)
    np.testing.assert_allclose(img, encoder.embed_images(images, batch_size=256), atol=1e-5)  # batching: float noise only


def test_fingerprint_stable_across_reloads_and_changes_with_the_seed(trained: dict, encoder: ClipEncoder) -> None:
    assert load_encoder(trained["path"]).fingerprint == encoder.fingerprint == trained["manifest"]["fingerprint"]
    assert trained["manifest1"]["fingerprint"] != trained["manifest"]["fingerprint"]
    assert trained["manifest1"]["corpus_hash"] == trained["manifest"]["corpus_hash"], "same world, same corpus"


def test_corrupt_samples_are_quarantined_with_counts_matching_the_world(trained: dict) -> None:
    expected = [(c["key"], KIND[c["kind"]]) for c in trained["world"]["corrupt"]]
    assert expected, "the smoke world damages some web samples on purpose"
    rows = [json.loads(line) for line in (trained["path"] / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((r["key"], r["kind"]) for r in rows) == sorted(expected)
    assert all(r["source"].startswith("web/A/") and r["reason"] for r in rows)
    manifest = trained["manifest"]
    assert manifest["quarantined"]["kinds"] == dict(Counter(kind for _, kind in expected))
    web_a = manifest["corpora"]["web/A"]
    assert web_a["samples"] == trained["world"]["counts"]["web_A"]
    assert web_a["skipped"] == trained["world"]["counts"]["web_A_corrupt"] == len(rows)
    assert manifest["pairs"] == sum(c["kept"] for c in manifest["corpora"].values())


def test_loading_a_missing_encoder_is_a_one_line_tuna_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(TunaError) as err:
        load_encoder(missing)
    assert isinstance(err.value, EncoderUnavailable)
    assert str(missing) in str(err.value) and "\n" not in str(err.value) and "tuna encoder" in str(err.value)
    with pytest.raises(EncoderUnavailable, match="config.json"):
        load_encoder(tmp_path)  # a folder, but not a saved model


def test_cli_reports_a_missing_vision_tower_on_one_line(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["encoder", "--config", str(SMOKE), f"run.data_dir={trained['root'] / 'seed0'}",
                 f"model.vision_tower={tmp_path / 'missing'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing" in err


def test_cli_skips_an_up_to_date_encoder_and_prints_accuracy(trained: dict, capsys: pytest.CaptureFixture) -> None:
    code = main(["encoder", "--config", str(SMOKE), f"run.data_dir={trained['root'] / 'seed0'}", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "up to date" in out and trained["manifest"]["fingerprint"] in out
    assert "ID" in out and "OOD" in out and "B" in out


def test_cli_evaluates_a_given_vision_tower_without_training(trained: dict, capsys: pytest.CaptureFixture) -> None:
    before = trained["path"].joinpath("manifest.json").read_text()
    code = main(["encoder", "--config", str(SMOKE), f"run.data_dir={trained['root'] / 'seed1'}",
                 f"model.vision_tower={trained['path']}", "--quiet"])
    assert code == 0 and "loaded" in capsys.readouterr().out
    assert trained["path"].joinpath("manifest.json").read_text() == before


def test_evaluate_zero_shot_matches_the_saved_metrics(trained: dict, encoder: ClipEncoder) -> None:
    metrics = evaluate_zero_shot(encoder, *zero_shot_splits(trained["cfg"]))
    saved = json.loads((trained["path"] / "metrics.json").read_text())
    for split in ("id", "ood", "b"):
        assert metrics[split]["top1"] == saved[split]["top1"]


def test_training_pixels_match_the_saved_processor(trained: dict, encoder: ClipEncoder) -> None:
    """No train/serve skew: the fast training path normalises exactly as the processor does."""
    images = _finer_images(trained, "id", 3)
    uint8 = np.stack([np.asarray(im, np.uint8).transpose(2, 0, 1) for im in images])
    import torch

    fast = clip_train.normalise(torch.from_numpy(uint8), encoder.processor).numpy()
    slow = encoder.processor(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(fast, slow, atol=1e-5)


def test_tokenizer_round_trips_and_ends_texts_with_the_pooled_token(trained: dict, encoder: ClipEncoder) -> None:
    tok = AutoTokenizer.from_pretrained(trained["path"])
    ids = tok(["a photo of a qqzzx."])["input_ids"][0]
    assert ids == encoder.tokenizer(["a photo of a qqzzx."])["input_ids"][0]
    eos = encoder.model.config.text_config.eos_token_id
    assert ids[-1] == eos == tok.eos_token_id and eos != 2, "CLIP pools at the first EOS; id 2 selects legacy argmax pooling"
    assert tok.convert_ids_to_tokens(ids)[1:-1] == ["a", "photo", "of", "a", "<unk>", "."]


def test_bad_encoder_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="encoder.text_heads"):
        load_recipe(SMOKE, ["encoder.text_heads=3"])
    cfg = load_recipe(SMOKE, ["encoder.patch_size=7"])
    tok = clip_train.build_tokenizer(["a photo of a thing"], cfg.encoder.max_text_tokens)
    with pytest.raises(ConfigError, match="encoder.patch_size"):
        clip_train.build_model(cfg.encoder, tok, cfg.world.image_size)


def test_object_caption_is_the_zero_shot_prompt_over_the_objects() -> None:
    assert clip_train.object_caption(["zedul"]) == PROMPT.format(name="zedul")
    assert clip_train.object_caption(["zedul", "pivin", "zedul", "mabrut"]) == "a photo of a zedul, a pivin and a mabrut."
    assert clip_train.object_caption(["zedul", "pivin"]) == "a photo of a zedul and a pivin."
    assert clip_train.object_caption([]) is None and clip_train.object_caption([""]) is None


def test_clean_captions_come_from_the_caption_text_alone(trained: dict) -> None:
    from tuna.formats import iter_web

    samples = list(iter_web(trained["path"].parent / "world" / "web" / "A"))[:60]
    captions = [s.caption.decode("utf-8") for s in samples if s.caption and s.caption.strip() and s.caption.isascii()]
    cleaned = clip_train.clean_captions(captions, trained["cfg"].mine)
    assert len(cleaned) == len(captions) and sum(c is not None for c in cleaned) >= 0.9 * len(captions)
    import re

    taxonomy = json.loads((trained["path"].parent / "world" / "taxonomy.json").read_text())
    truth = {n for s in samples for n in s.meta["objects"]} | {c["coarse"] for c in taxonomy["A"]["classes"]}
    named = {w for c in cleaned if c for w in re.findall(r"\ba (\w+)", c.removeprefix("a photo of "))}
    assert len(named & truth) >= 0.8 * len(named), "the world's object names and hypernyms, nearly all"


def test_training_with_clean_captions_records_them_and_tracks_the_miner(trained: dict, tmp_path: Path) -> None:
    shutil.copytree(trained["root"] / "seed0" / "world", tmp_path / "world")
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", "encoder.clean_captions=1.0"])
    manifest = train_encoder(cfg, progress=False, log=_quiet)
    cleaning = manifest["clean_captions"]
    assert cleaning["rate"] == 1.0 and cleaning["with_objects"] >= 0.9 * manifest["pairs"]
    assert manifest["inputs"]["spacy_model"] == cfg.mine.spacy_model and is_up_to_date(cfg)
    assert manifest["fingerprint"] != trained["manifest"]["fingerprint"]
    # Off (the default), nothing about cleaning enters the inputs: encoders trained before the key stay up to date.
    assert trained["manifest"]["clean_captions"] == {"rate": 0.0}
    assert "spacy_model" not in trained["manifest"]["inputs"]
    import dataclasses
    import hashlib

    fields = dataclasses.asdict(trained["cfg"].encoder)
    for later in ("clean_captions", "patch_loss", "patch_loss_layer", "object_loss", "object_loss_tokens"):  # added later
        del fields[later]
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert trained["manifest"]["inputs"]["encoder_config"] == before
    with pytest.raises(ConfigError, match="encoder.clean_captions"):
        load_recipe(SMOKE, ["encoder.clean_captions=2"])


def test_object_targets_keep_nouns_named_often_enough() -> None:
    objects = [["zedul", "pivin"], ["zedul"], ["zedul", "zedul"], ["mabrut"], []]
    t = clip_train.ObjectTargets.from_objects(objects, min_count=2)
    assert t.vocabulary == ["zedul"], "a noun counts once per caption; rarer nouns are left out"
    assert t.targets.tolist() == [[1.0], [1.0], [1.0], [0.0], [0.0]]
    assert clip_train.ObjectTargets.from_objects(objects, min_count=1).vocabulary == ["mabrut", "pivin", "zedul"]


def _tiny_clip(overrides: list[str]) -> tuple:
    import torch

    cfg = load_recipe(SMOKE, ["encoder.hidden_size=16", "encoder.heads=2", "encoder.layers=1", "encoder.text_hidden_size=16",
                              "encoder.projection_dim=8", "encoder.batch_size=4", "encoder.epochs=2", *overrides])
    captions = ["a zedul and a pivin", "a zedul", "a mabrut", "a pivin", "a zedul", "a mabrut", "a pivin", "a thing"]
    tok = clip_train.build_tokenizer(captions, cfg.encoder.max_text_tokens)
    torch.manual_seed(0)
    model = clip_train.build_model(cfg.encoder, tok, 24)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (len(captions), 3, 24, 24), dtype=torch.uint8, generator=gen)
    pairs = clip_train.Pairs(pixels=pixels, captions=captions, total=len(captions), quarantine=clip_train.Quarantine(),
                             corpus_sha256="0" * 64)
    mined = [[w for w in c.split() if w not in ("a", "and")] for c in captions]
    return cfg, model, tok, pairs, clip_train.ObjectTargets.from_objects(mined, min_count=1)


def test_object_loss_reads_the_cls_the_patches_or_both() -> None:
    import torch

    cfg, model, tok, pairs, objects = _tiny_clip([])
    text = tok(pairs.captions[:4], padding=True, return_tensors="pt")
    out = model(**text, pixel_values=clip_train.normalise(pairs.pixels[:4], clip_train.build_processor(24)), return_loss=True)
    head = torch.nn.Linear(16, len(objects.vocabulary))
    losses = {t: clip_train.object_loss(model, head, out, objects.targets[:4], t) for t in ("cls", "patches", "both")}
    assert torch.allclose(losses["both"], losses["cls"] + losses["patches"])
    losses["patches"].backward()
    assert model.vision_model.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0, "the patch tokens are trained"
    with pytest.raises(ConfigError, match="encoder.object_loss_tokens"):
        load_recipe(SMOKE, ["encoder.object_loss_tokens=mean"])
    with pytest.raises(ConfigError, match="encoder.object_loss"):
        load_recipe(SMOKE, ["encoder.object_loss=-1"])


def test_training_with_the_object_loss_keeps_the_default_path_unchanged() -> None:
    import torch

    runs = {}
    for name, overrides in {"off": [], "off_again": [], "on": ["encoder.object_loss=1", "encoder.object_loss_tokens=both"]}.items():
        cfg, model, tok, pairs, objects = _tiny_clip(overrides)
        curve = clip_train.train_clip(model, pairs, tok, clip_train.build_processor(24), cfg.encoder, seed=0, progress=False,
                                      log=_quiet, objects=objects if name == "on" else None)
        runs[name] = (curve, torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs["off"][1], runs["off_again"][1]) and runs["off"][0]["object_per_epoch"] is None
    assert not torch.equal(runs["off"][1], runs["on"][1])
    assert len(runs["on"][0]["object_per_epoch"]) == 2 and runs["on"][0]["object_per_epoch"][0] > 0
    cfg, model, tok, pairs, _ = _tiny_clip(["encoder.object_loss=1"])
    with pytest.raises(ValueError, match="object targets"):
        clip_train.train_clip(model, pairs, tok, clip_train.build_processor(24), cfg.encoder, seed=0, progress=False, log=_quiet)


def test_training_with_the_object_loss_records_it_and_tracks_the_miner(trained: dict, tmp_path: Path) -> None:
    shutil.copytree(trained["root"] / "seed0" / "world", tmp_path / "world")
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", "encoder.object_loss=0.5", "encoder.object_loss_tokens=patches"])
    manifest = train_encoder(cfg, progress=False, log=_quiet)
    assert manifest["object_loss"]["vocabulary"] >= 1 and len(manifest["object_loss"]["per_epoch"]) == cfg.encoder.epochs
    assert manifest["inputs"]["spacy_model"] == cfg.mine.spacy_model and is_up_to_date(cfg)
    assert manifest["clean_captions"] == {"rate": cfg.encoder.clean_captions} and "object_loss" not in trained["manifest"]
    assert manifest["inputs"]["encoder_config"] != trained["manifest"]["inputs"]["encoder_config"]


def test_training_reads_the_clip_only_crawl_when_the_world_has_one(tmp_path: Path) -> None:
    from tuna.world.generate import generate_world

    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", "world.sizes.clip_web=120"])
    world = generate_world(cfg, progress=False, log=_quiet)
    manifest = train_encoder(cfg, progress=False, log=_quiet)
    assert set(manifest["corpora"]) == {"web/A", "web/B", "web/clip"}
    assert manifest["corpora"]["web/clip"]["samples"] == world["counts"]["web_clip"] == 120
    assert manifest["pairs"] == sum(c["kept"] for c in manifest["corpora"].values())


def test_an_encoder_stays_up_to_date_while_its_own_inputs_do(trained: dict, tmp_path: Path) -> None:
    """The encoder reads the web corpora, the taxonomy and FINER: a world regenerated with other instruction or
    validation sizes keeps it (no 10-minute retrain for the same weights); other web corpora do not. An encoder
    saved before, with the whole world's fingerprint, stays up to date on that same world only."""
    from tuna.world.generate import generate_world

    base = trained["root"] / "seed0"
    for name, overrides, fresh in (("other-instructions", ["world.sizes.yes_no=20", "world.sizes.mme_val=2"], True),
                                   ("other-web", ["world.sizes.web=310"], False)):
        cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path / name}", *overrides])
        generate_world(cfg, progress=False, log=_quiet)
        shutil.copytree(base / "encoder", tmp_path / name / "encoder")
        assert is_up_to_date(cfg) is fresh, name
    legacy = tmp_path / "legacy"
    shutil.copytree(base / "world", legacy / "world")
    shutil.copytree(base / "encoder", legacy / "encoder")
    manifest = json.loads((legacy / "encoder" / "manifest.json").read_text())
    assert manifest["inputs"]["world"].startswith("world-inputs:")
    manifest["inputs"]["world"] = json.loads((legacy / "world" / "manifest.json").read_text())["fingerprint"]
    (legacy / "encoder" / "manifest.json").write_text(json.dumps(manifest))
    cfg = load_recipe(SMOKE, [f"run.data_dir={legacy}"])
    assert is_up_to_date(cfg)
    generate_world(load_recipe(SMOKE, [f"run.data_dir={legacy}", "world.sizes.yes_no=20"]), progress=False, log=_quiet)
    assert not is_up_to_date(load_recipe(SMOKE, [f"run.data_dir={legacy}", "world.sizes.yes_no=20"]))


def test_augment_zooms_into_a_square_inside_the_image_and_flips() -> None:
    import torch

    from tuna.recipe.sections import EncoderConfig

    size = 48
    ramp = torch.arange(size, dtype=torch.uint8).repeat(size, 1) * 5   # value = 5 x column
    x = torch.stack([ramp, ramp.T, ramp]).unsqueeze(0).repeat(64, 1, 1, 1)  # (B, 3, S, S)
    gen = torch.Generator().manual_seed(0)
    same = clip_train.augment(x, EncoderConfig(zoom=1.0, flip=False, rotate=False), gen)
    assert torch.allclose(same, x.float(), atol=1e-3)                   # zoom 1, no flip: the image itself

    out = clip_train.augment(x, EncoderConfig(zoom=0.5, flip=False, rotate=False), gen)
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]                          # the columns one row of the crop covers
    full = 5.0 * (size - 1)
    assert bool(((span > 0.45 * full) & (span < 1.0 * full)).all())    # a side of 0.5..1 of the image, upright
    assert bool((span < 0.9 * full).any()) and bool((span > 0.6 * full).any())  # sides drawn across the range
    assert bool((out >= 0).all()) and bool((out <= full).all())          # inside the image: no padding values
    assert torch.allclose(out[:, 0, :, :], out[:, 2, :, :])            # one transform per image, every channel

    flipped = clip_train.augment(x, EncoderConfig(zoom=1.0, flip=True, rotate=False), gen)
    mirrored = (flipped[:, 0, 0, 0] > flipped[:, 0, 0, -1])             # right-to-left ramps: the flipped ones
    assert 0 < int(mirrored.sum()) < 64
    assert torch.allclose(flipped[mirrored], x.float().flip(-1)[mirrored], atol=1e-3)
