"""`tuna data check`: on the smoke world, on upstream-layout fixtures, and on the bad inputs of issue 14."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import upstream
from support import SMOKE, World
from tuna.cli import main
from tuna.datacheck import CheckOptions, check_source
from tuna.recipe import load_recipe
from tuna.sources import sources


def _check(world: World, capsys: pytest.CaptureFixture[str], *overrides: str, source: tuple[str, ...] = ()) -> tuple[int, str, str]:
    argv = ["data", "check", "--config", str(SMOKE), f"run.data_dir={world.cfg.run.data_dir}", *overrides]
    argv += [a for s in source for a in ("--source", s)]
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_world_checks_clean_but_for_its_planted_web_damage(world: World, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _check(world, capsys, "--json", str(tmp_path / "check.json"))
    assert code == 0 and not err and "Traceback" not in out, out
    report = json.loads((tmp_path / "check.json").read_text())
    by_name = {s["name"]: s for s in report["sources"]}
    assert report["fatal"] == 0 and set(by_name) == {s.name for s in sources(world.cfg).all()}
    assert by_name["web_clip"]["skipped"]                       # smoke writes no CLIP-only crawl
    web = by_name["web_A"]["counts"]                            # the world plants damaged samples: counted, not fatal
    assert web["samples"] > 0 and sum(v for k, v in web.items() if k.startswith("skipped_")) > 0
    assert by_name["pope_id"]["counts"]["missing_images"] == 0 and by_name["mme_id"]["counts"]["questions"] > 0


def test_upstream_fixtures_check_clean(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for shard in range(2):
        upstream.img2dataset_shard(tmp_path / "cc3m", shard, 3, failed=1)
    llava, data = upstream.llava_665k(tmp_path)
    pope, val = upstream.pope_official(tmp_path)
    finer, finer_data = upstream.finer_unified(tmp_path)
    overrides = [f"data.web_B.path={tmp_path}/cc3m/{{00000..00001}}.tar",
                 f"data.instruction.path={llava}", f"data.instruction.images={data}",
                 f"data.pope_id.path={pope}", f"data.pope_id.images={val}",
                 f"data.finer_id.path={finer}", f"data.finer_id.images={finer_data}",
                 f"data.mme_id.path={upstream.mme_release(tmp_path)}",
                 f"data.captions_id.path={upstream.coco_release(tmp_path)}"]
    names = ("web_B", "instruction", "pope_id", "finer_id", "mme_id", "captions_id")
    code, out, err = _check(world, capsys, *overrides, "--json", str(tmp_path / "r.json"), source=names)
    assert code == 0 and not err, out
    counts = {s["name"]: s["counts"] for s in json.loads((tmp_path / "r.json").read_text())["sources"]}
    assert counts["web_B"]["samples"] == 6 and counts["web_B"]["failed_downloads"] == 2
    assert counts["instruction"]["text_only"] == 1 and counts["instruction"]["missing_images"] == 0
    assert counts["pope_id"]["questions_random"] == 9 and counts["finer_id"]["list_labels"] == 2   # the third row holds strings
    assert counts["mme_id"]["subtasks"] == 5 and counts["captions_id"]["images"] == 2


def _one_fatal_line(out: str, *parts: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("fatal:")]
    assert len(lines) == 1, out
    assert all(p in lines[0] for p in parts), lines[0]
    return lines[0]


def test_a_path_that_does_not_exist(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _check(world, capsys, "data.pope_ood.path=/no/such/pope", source=("pope_ood",))
    assert code == 2 and not err
    _one_fatal_line(out, "data.pope_ood", "/no/such/pope", "does not exist", "fix: set data.pope_ood.path")


def test_a_format_that_does_not_match_its_declaration(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    finer_file = sources(world.cfg).eval_set("finer", "id").path / "finer.jsonl"   # JSON lines where a JSON list belongs
    code, out, _ = _check(world, capsys, f"data.alignment.path={finer_file}", source=("alignment",))
    assert code == 2
    _one_fatal_line(out, "data.alignment", f"{finer_file}:1", "expected a JSON list of samples", "fix: ")


def test_an_image_root_missing_half_its_files(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pope, val = upstream.pope_official(tmp_path)
    for image in sorted(val.iterdir())[:2]:
        image.unlink()
    code, out, _ = _check(world, capsys, f"data.pope_id.path={pope}", f"data.pope_id.images={val}", source=("pope_id",))
    assert code == 2
    line = _one_fatal_line(out, "2 of 3 images missing (67%)", f"under {val}", "fix: point data.pope_id.images")
    assert "coco_pope_random.json:4" in line   # the file and line that first name a missing image (COCO 42, line 4)


def test_a_finer_file_with_unexpected_label_types(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, data = upstream.finer_unified(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["fine-level-lbl"] = {"name": "Cessna 172"}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _check(world, capsys, f"data.finer_b.path={path}", f"data.finer_b.images={data}", source=("finer_b",))
    assert code == 2 and "Traceback" not in out + err
    _one_fatal_line(out, f"{path}:3", "fine-level-lbl must be a non-empty string or a non-empty list of strings, got dict",
                    "fix: fix the row")


def test_duplicates_and_few_missing_images_are_warnings(tmp_path: Path) -> None:
    path, data = upstream.llava_pretrain(tmp_path)
    rows = json.loads(path.read_text())
    rows.append(dict(rows[0]))
    path.write_text(json.dumps(rows))
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}/run", f"data.alignment.path={path}", f"data.alignment.images={data}"])
    chk = check_source(sources(cfg)["alignment"], CheckOptions(max_missing=0.5))
    assert not chk.fatal and chk.counts["duplicate_ids"] == 1
    (data / "00453" / "004539375.jpg").unlink()
    chk = check_source(sources(cfg)["alignment"], CheckOptions(max_missing=0.5))
    assert not chk.fatal and chk.counts["missing_images"] == 1 and len(chk.findings) == 2


def test_runs_refuse_bad_user_data_in_one_line_before_any_step(world: World, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`tuna run`, `tuna train` and the pipeline's validate task read the sources a user declared first: a FINER
    file with a bad label type or shards that are not there stop them in one line, and nothing is written."""
    from tuna.datacheck import preflight
    from tuna.kfp.validate import validate_inputs

    path, data = upstream.finer_unified(tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["coarse-level-lbl"] = 7
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_dir = tmp_path / "run"
    bad = [f"run.data_dir={out_dir}", f"data.finer_ood.path={path}", f"data.finer_ood.images={data}"]
    assert main(["run", "--config", str(SMOKE), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2" in err[0] and "coarse-level-lbl" in err[0] and "fix:" in err[0], err
    assert not out_dir.exists()                                       # no step ran
    with pytest.raises(Exception, match="coarse-level-lbl"):
        validate_inputs(str(SMOKE), bad)
    shards = [f"run.data_dir={out_dir}", f"data.alignment.path={tmp_path}/none.json"]
    assert main(["train", "--config", str(SMOKE), "--stage", "1", *shards]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.alignment" in err[0] and "does not exist" in err[0], err
    with pytest.raises(Exception, match="no WebDataset shard"):
        preflight([sources(load_recipe(SMOKE, [f"data.web_B.path={tmp_path}/cc/{{00000..00003}}.tar"]))["web_B"]])
    preflight(sources(world.cfg).all())                               # the world's own copies: nothing to say
