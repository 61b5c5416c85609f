"""The recipe's data: section and tuna.sources: every input declared, the world one provider of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from support import SMOKE, World
from tuna.cli import main
from tuna.errors import ConfigError
from tuna.formats import iter_web, load_finer, load_llava, load_mme
from tuna.layout import layout
from tuna.recipe import load_recipe
from tuna.recipe.data import KINDS
from tuna.sources import EVAL_SOURCES, sources
from tuna.steps import Options, execute


def test_every_world_source_exists_where_the_world_writes_it(world: World) -> None:
    """The world generator and tuna.layout agree: each default source is a real file or folder of its format."""
    src = sources(world.cfg)
    for s in src.all():
        if s.name == "web_clip":  # written only when world.sizes.clip_web > 0 (smoke: 0)
            continue
        assert s.from_world and s.path.exists(), s
    assert sorted(p.name for p in src.web("A").path.glob("*.tar"))
    assert next(iter(iter_web(src.web("B").path))).key
    assert load_llava(src["alignment"].path) and load_llava(src["instruction"].path)
    assert load_finer(src.eval_set("finer", "ood").path / "finer.jsonl")
    assert (src.eval_set("finer", "id", validation=True).path / "finer.jsonl").is_file()
    assert list(src.eval_set("pope", "id").path.glob("*.json")) and (src.eval_set("mme", "ood").path).is_dir()
    assert load_mme(src.eval_set("mme", "ood", validation=True).path)
    assert (src.eval_set("captions", "id").path / "captions.json").is_file()
    assert json.loads(src["taxonomy"].path.read_text())


def test_a_declared_path_replaces_the_worlds_copy(world: World, tmp_path: Path) -> None:
    mine = tmp_path / "my-finer-ood"
    shutil.copytree(sources(world.cfg).eval_set("finer", "ood").path, mine)
    cfg = load_recipe(SMOKE, [f"run.data_dir={world.cfg.run.data_dir}", f"data.finer_ood.path={mine}"])
    src = sources(cfg)
    assert src.eval_set("finer", "ood").path == mine and not src["finer_ood"].from_world
    assert src["finer_id"].from_world and src.from_world
    before = src.digest("finer_ood")
    assert before != sources(world.cfg).digest("finer_ood")  # the world's digest is its manifest's
    (mine / "finer.jsonl").write_text((mine / "finer.jsonl").read_text() + "\n")
    assert src.digest("finer_ood") != before  # user data changed -> outputs that read it are stale


def test_a_recipe_that_declares_every_source_needs_no_world(world: World, tmp_path: Path) -> None:
    root = layout(world.cfg).world
    overrides = [f"run.data_dir={tmp_path}"] + [f"data.{s.name}.path={s.path}" for s in sources(world.cfg).all()]
    cfg = load_recipe(SMOKE, overrides)
    assert not sources(cfg).from_world and all(s.path.is_relative_to(root) for s in sources(cfg).all())
    out = execute("world", cfg, Options(progress=False))
    assert out.status == "not needed" and not layout(cfg).world.exists()


@pytest.mark.parametrize(("override", "message"), [
    ("data.web_A.format=llava_json", "data.web_A.format: web_A reads webdataset; got 'llava_json'"),
    ("data.finer_id.format=parquet", "data.finer_id.format: must be one of webdataset, llava_json"),
    ("data.alignment.path=", "data.alignment.path: must be a non-empty path or null"),
    ("data.coco.path=/x", "unknown key 'data.coco'; allowed under data: web_A, web_B"),
])
def test_bad_declarations_fail_at_load_with_one_line(override: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(SMOKE, [override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert main(["world", "--config", str(SMOKE), override]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_sources_refuse_unknown_names_and_splits() -> None:
    src = sources(load_recipe(SMOKE))
    with pytest.raises(ConfigError, match="unknown data source 'coco'"):
        src["coco"]
    with pytest.raises(ConfigError, match="no eval set pope/b"):
        src.eval_set("pope", "b")
    # CHAIR's validation split is the POPE validation scenes (their images and instances)
    assert src.eval_set("captions", "ood", validation=True).path == src.eval_set("pope", "ood", validation=True).path
    assert set(EVAL_SOURCES) < set(KINDS) and len(src.all()) == len(KINDS)


def test_a_disabled_source_is_not_part_of_the_run(world: World) -> None:
    """``enabled: false``: gone from all(), the splits and the digests; a step that reads it anyway gets one line."""
    from tuna.sources import SourceDisabled

    cfg = load_recipe(SMOKE, [f"run.data_dir={world.cfg.run.data_dir}", "data.pope_ood.enabled=false",
                              "data.finer_val_b.enabled=false"])
    src = sources(cfg)
    assert not src.has("pope_ood") and "pope_ood" not in [s.name for s in src.all()] and src.has("pope_id")
    assert src.splits("pope") == ["id"] and src.splits("finer", validation=True) == ["id", "ood"]
    assert src.digest("pope_id", "pope_ood") != sources(world.cfg).digest("pope_id", "pope_ood")   # the run changed
    with pytest.raises(SourceDisabled, match=r"^data\.pope_ood is disabled \(enabled: false\) but this step reads it"):
        src.eval_set("pope", "ood")


def test_the_llava7b_recipe_generates_nothing() -> None:
    """configs/llava7b.yaml: every input is a real upstream file on the data PVC or disabled; no world step."""
    cfg = load_recipe(SMOKE.parent / "llava7b.yaml")
    src = sources(cfg)
    assert not src.from_world and all(str(s.path).startswith("/mnt/tuna/data/") for s in src.all())
    assert {s.name: s.format for s in src.all()} == {
        "web_A": "webdataset", "alignment": "llava_json", "instruction": "llava_json", "pope_id": "pope",
        "finer_id": "finer_jsonl", "mme_id": "mme", "captions_id": "coco_captions"}
    assert execute("world", cfg, Options(progress=False)).status == "not needed"
