"""`tuna eval` on the smoke world with models trained by the real `tuna train` (the `trained` fixture):
every task scored for TUNA and the baseline, the datastore swap, the table, and the one-line refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from support import SMOKE
from tuna.cli import main


def _numbers(tree: object) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_eval_scores_every_task_for_tuna_and_baseline(trained, capsys: pytest.CaptureFixture[str]) -> None:
    d = trained.cfg.data_dir
    assert main(["eval", "--config", str(SMOKE), f"run.data_dir={d}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| tuna |" in out and "| baseline |" in out and "Datastore swap" in out
    tuna = json.loads((d / "eval/tuna/metrics.json").read_text())
    base = json.loads((d / "eval/baseline/metrics.json").read_text())
    for m in (tuna, base):
        assert set(m["seconds"]) == {"pope", "finer", "mme", "chair"}
        assert set(m["pope"]) == {"id", "ood"} and set(m["pope"]["id"]["per_split"]) == {"random", "popular", "adversarial"}
        assert all(math.isfinite(x) for x in _numbers(m["headline"]))
        assert all(0.0 <= m["headline"][k] <= 1.0 for k in m["headline"] if not k.startswith("mme"))
        n_pope = sum(s["n"] for s in m["pope"]["id"]["per_split"].values())
        assert n_pope == 3 * 6 * trained.cfg.world.sizes.pope_images  # every question answered and scored
    # TUNA answers domain B with datastores A, B and none (the zero-shot swap); the baseline has no tags.
    assert {"b@A", "b@B", "b@none"} <= set(tuna["finer"]) and set(base["finer"]) == {"id", "ood", "b@none"}
    assert (tuna["swap_datastore"], base["swap_datastore"]) == ("B", None)
    assert tuna["headline"]["finer_b_fine_em"] == tuna["finer"]["b@B"]["direct"]["fine_em"]
    assert base["headline"]["finer_b_fine_em"] == base["finer"]["b@none"]["direct"]["fine_em"]
    assert {"direct", "attrseek"} <= set(tuna["finer"]["ood"])
    table = (d / "eval/table.md").read_text()
    assert table.splitlines()[0].startswith("| variant | FINER OOD fine EM")
    # Up to date: a second call re-evaluates nothing.
    assert main(["eval", "--config", str(SMOKE), f"run.data_dir={d}", "--quiet"]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_eval_of_an_untrained_variant_is_one_line(trained, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--config", str(SMOKE), "--variant", "random", f"run.data_dir={trained.cfg.data_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tuna train --variant random" in err[0]


def test_eval_file_with_missing_fields_is_one_line(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "data"
    shutil.copytree(trained.cfg.data_dir, broken, ignore=shutil.ignore_patterns("checkpoints", "mlflow"))
    finer = broken / "world/eval/finer/ood/finer.jsonl"
    rows = finer.read_text().splitlines()
    row = json.loads(rows[0])
    del row["fine-level-lbl"]
    finer.write_text("\n".join([json.dumps(row)] + rows[1:]) + "\n")
    code = main(["eval", "--config", str(SMOKE), "--variant", "baseline", "--force", "--quiet",
                 f"run.data_dir={broken}", "eval.tasks=[finer]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fine-level-lbl" in err[0] and "finer.jsonl" in err[0]


def test_validation_scores_finer_pope_mme_and_chair_on_the_validation_split_only(trained, capsys: pytest.CaptureFixture[str]) -> None:
    """`tuna eval --validation`: FINER, POPE, MME and CHAIR on world/val (never the eval images; CHAIR describes the
    POPE validation scenes), its own metrics file, no report."""
    d = trained.cfg.data_dir
    report = d / "eval/report/report.md"
    before = report.stat().st_mtime_ns if report.is_file() else None
    assert main(["eval", "--config", str(SMOKE), "--validation", f"run.data_dir={d}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| tuna |" in out and "| baseline |" in out and "eval/validation" in out
    m = json.loads((d / "eval/validation/tuna.json").read_text())
    assert m["split"] == "val" and set(m["seconds"]) == {"finer", "pope", "mme", "chair"}
    n = trained.cfg.world.sizes.finer_val
    assert m["finer"]["ood"]["direct"]["n"] == n and {"b@A", "b@B", "b@none"} <= set(m["finer"])
    for group in ("id", "ood"):   # 3 POPE splits x 6 questions per validation image, every answer scored
        assert {s: r["n"] for s, r in m["pope"][group]["per_split"].items()} == dict.fromkeys(
            ("random", "popular", "adversarial"), 6 * trained.cfg.world.sizes.pope_val)
        assert {f"pope_{group}_acc", f"pope_{group}_yes", f"pope_{group}_adv_acc"} <= set(m["headline"])
    for group in ("id", "ood"):   # 2 questions per validation image of each subtask, every answer read
        assert {t: r["questions"] for t, r in m["mme"][group]["tasks"].items()} == dict.fromkeys(
            ("existence", "count", "position", "color"), 2 * trained.cfg.world.sizes.mme_val)
        assert 0 <= m["headline"][f"mme_{group}_total"] <= 800
    for group in ("id", "ood"):   # one description per POPE validation scene, scored against its instances
        scenes = json.loads((d / f"world/val/pope/{group}/instances.json").read_text())["images"]
        assert m["chair"][group]["n"] == len(scenes) == trained.cfg.world.sizes.pope_val
        assert {f"chair_{group}_i", f"chair_{group}_s"} <= set(m["headline"])
    assert all(0.0 <= v <= 1.0 for k, v in m["headline"].items() if not k.startswith("mme_"))
    cached = {p.name for p in (d / "eval/retrieved").iterdir()}
    assert any(name.startswith("val-finer-ood") for name in cached)          # the validation images' own tags
    assert any(name.startswith("val-pope-id") for name in cached) and any(name.startswith("val-mme-ood") for name in cached)
    assert any(name.startswith("val-captions-ood") for name in cached)
    assert (report.stat().st_mtime_ns if report.is_file() else None) == before


def test_chair_counts_the_descriptions_its_token_cap_cut(trained, tmp_path: Path) -> None:
    """eval.chair_max_new_tokens: the cap on each detailed description; ``cut`` counts those it stopped before their
    end, and the cap is recorded beside CHAIR's numbers."""
    copy = tmp_path / "data"
    shutil.copytree(trained.cfg.data_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "mlflow", "eval"))
    base = ["eval", "--config", str(SMOKE), "--validation", "--variant", "baseline", "--quiet", f"run.data_dir={copy}",
            "eval.tasks=[chair]"]
    n = trained.cfg.world.sizes.pope_val
    assert main([*base, "eval.chair_max_new_tokens=1"]) == 0
    short = json.loads((copy / "eval/validation/baseline.json").read_text())["chair"]
    # every description that says anything was cut (one that starts with the end token is empty, and ended)
    assert all(g["max_new_tokens"] == 1 and g["n"] == n and n - g["empty"] <= g["cut"] <= n for g in short.values())
    assert sum(g["cut"] for g in short.values()) > 0
    assert main([*base, "eval.chair_max_new_tokens=200"]) == 0   # a new cap makes the old scores stale
    full = json.loads((copy / "eval/validation/baseline.json").read_text())["chair"]
    assert all(g["max_new_tokens"] == 200 and 0 <= g["cut"] <= n for g in full.values())


def test_validation_without_a_validation_split_is_one_line(trained, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = trained.cfg.data_dir
    copy = tmp_path / "noval"
    shutil.copytree(d / "world", copy / "world", ignore=shutil.ignore_patterns("val"))
    shutil.copytree(d / "train/tuna/stage2/model", copy / "train/tuna/stage2/model")
    code = main(["eval", "--config", str(SMOKE), "--validation", "--variant", "tuna", f"run.data_dir={copy}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "finer_val" in err and len(err.strip().splitlines()) == 1


def test_eval_scores_upstream_benchmark_files(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The smoke models scored on benchmark files in their upstream layouts (tests/upstream.py): POPE's
    coco_pope_*.json over COCO val2014, MME's release folders (both layouts), FINER's unified jsonl with list
    labels, COCO 2014 captions + instances for CHAIR: every question answered and scored. As in configs/llava7b.yaml
    the world-only splits (held-out classes, domain B, the swap) are disabled: scored nowhere, no error; FINER is
    asked as FINER asks (a question per level)."""
    import upstream

    copy = tmp_path / "data"
    root = str(trained.cfg.data_dir)
    shutil.copytree(root, copy, ignore=lambda d, names: [n for n in names if n in ("checkpoints", "mlflow")
                                                        or (d == root and n == "eval")])   # world/eval stays
    pope, val = upstream.pope_official(tmp_path)
    finer, finer_data = upstream.finer_unified(tmp_path)
    mme = upstream.mme_release(tmp_path)
    coco = upstream.coco_release(tmp_path)
    code = main(["eval", "--config", str(SMOKE), "--quiet", f"run.data_dir={copy}",
                 f"data.pope_id.path={pope}", f"data.pope_id.images={val}",
                 f"data.finer_id.path={finer}", f"data.finer_id.images={finer_data}",
                 f"data.mme_id.path={mme}", f"data.captions_id.path={coco}", "eval.swap_datastore=null",
                 "eval.finer_questions=per_level",
                 *(f"data.{n}.enabled=false" for n in ("pope_ood", "finer_ood", "finer_b", "mme_ood", "captions_ood"))])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err, err
    for variant in ("tuna", "baseline"):
        m = json.loads((copy / f"eval/{variant}/metrics.json").read_text())
        per_split = m["pope"]["id"]["per_split"]
        assert {s: r["n"] for s, r in per_split.items()} == dict.fromkeys(("random", "popular", "adversarial"), 9)
        assert m["finer"]["id"]["direct"]["n"] == 3 and {"superordinate_em", "coarse_em", "fine_em", "token_f1"} <= set(
            m["finer"]["id"]["direct"]) and m["finer"]["id"]["attrseek"]["n"] == 3
        assert all(0.0 <= v <= 1.0 for k, v in m["headline"].items() if not k.startswith("mme"))
        assert m["mme"]["id"]["n"] == 10 and len(m["mme"]["id"]["tasks"]) == 5    # 5 images x 2 questions
        assert m["chair"]["id"]["n"] == 2
        assert [set(m[t]) for t in ("pope", "mme", "chair")] == [{"id"}] * 3 and set(m["finer"]) == {"id"}, variant
