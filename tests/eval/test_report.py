"""The evaluation report on models trained by the real `tuna train` (the `trained` fixture): markdown, PNGs,
flat metrics, MLflow artifacts read back, the probes figure when probes.json exists, the CLI's report line, and the
POPE answer files beside the metrics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from support import SMOKE, World, quiet
from tuna import track
from tuna.cli import main
from tuna.eval.evaluate import EvalError
from tuna.eval.report import is_up_to_date, write_report
from tuna.recipe import load_recipe

VARIANTS = ("tuna", "baseline")
FIGURES = {"headline.png", "pope_splits.png", "swap.png", "tuner_weights.png"}


@pytest.fixture(scope="module")
def evaluated(trained: World) -> World:
    """``trained`` with TUNA and the baseline evaluated (reusing metrics another test already wrote)."""
    from tuna.eval.suite import evaluate_variant

    for variant in VARIANTS:
        if not (trained.cfg.data_dir / "eval" / variant / "metrics.json").is_file():
            evaluate_variant(trained.cfg, variant, log=quiet)
    return trained


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default store (sqlite under the data dir); no tracking URI, parent run or rank from the caller's shell."""
    for name in (track.TRACKING_URI_ENV, track.PARENT_RUN_ENV, "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def _check_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100, path
        img.verify()


def test_report_writes_markdown_pngs_metrics_and_logs_them_to_mlflow(evaluated: World) -> None:
    from mlflow import MlflowClient

    cfg = evaluated.cfg
    with track.stage_run("eval", cfg) as run:
        report = write_report(cfg, VARIANTS, run=run, command="tuna eval --config configs/smoke.yaml", log=quiet)
    folder = report.parent
    assert report == cfg.data_dir / "eval" / "report" / "report.md"
    text = report.read_text(encoding="utf-8")
    assert "| tuna |" in text and "| baseline |" in text and "Datastore swap" in text
    assert "`tuna eval --config configs/smoke.yaml`" in text
    links = _links(text)
    assert FIGURES <= set(links), links
    assert all((folder / name).is_file() for name in links)  # links only figures that exist
    pngs = {p.name for p in folder.glob("*.png")}
    assert pngs == set(links)  # and every figure is linked
    for name in pngs:
        _check_png(folder / name)
    assert ("probes.png" in pngs) == (cfg.data_dir / "eval" / "probes.json").is_file()

    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(VARIANTS) <= set(metrics)
    for variant in VARIANTS:
        assert {"finer_ood_fine_em", "pope_id_f1", "pope_ood_random_f1"} <= set(metrics[variant])
        assert all(isinstance(x, float) for x in metrics[variant].values())
    assert is_up_to_date(cfg, VARIANTS)

    client = MlflowClient(track.tracking_uri(cfg))
    logged = {Path(a.path).name for a in client.list_artifacts(run.run_id, "report")}
    assert {"report.md", "metrics.json", *pngs} <= logged
    back = client.download_artifacts(run.run_id, "report/metrics.json", str(cfg.data_dir / "eval" / "_download"))
    assert json.loads(Path(back).read_text()) == metrics
    shutil.rmtree(cfg.data_dir / "eval" / "_download")
    data = client.get_run(run.run_id).data
    assert data.metrics["tuna_finer_ood_fine_em"] == pytest.approx(metrics["tuna"]["finer_ood_fine_em"])
    assert "baseline_pope_id_f1" in data.metrics and "tuna_finer_b_at_B_fine_em" in data.metrics


def _llava_reads_no(text: str) -> bool:
    """LLaVA's llava/eval/eval_pope.py rule, restated: the first sentence, commas dropped, split on spaces; "no"
    when a word is No, no or not, else "yes"."""
    first = text.split(".")[0] if "." in text else text
    return any(w in ("No", "no", "not") for w in first.replace(",", "").split(" "))


def test_eval_writes_every_pope_answer_in_llavas_answer_file_format(evaluated: World) -> None:
    """eval/<variant>/answers/pope-<group>-<split>.jsonl: one line per question in the question file's order (its
    question_id, prompt, label, image), the generation as ``text`` and the tags shown; scoring the files again gives
    metrics.json's counts, and LLaVA's own reading of each non-empty answer agrees with ours."""
    from tuna.eval.pope import pope_by_tags, pope_metrics
    from tuna.readers.pope import load_pope_splits
    from tuna.sources import sources

    cfg = evaluated.cfg
    for variant in VARIANTS:
        metrics = json.loads((cfg.data_dir / "eval" / variant / "metrics.json").read_text())
        for group in sources(cfg).splits("pope"):
            questions = load_pope_splits(sources(cfg).eval_set("pope", group).path)
            for split, rows in questions.items():
                path = cfg.data_dir / "eval" / variant / "answers" / f"pope-{group}-{split}.jsonl"
                answers = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
                assert [(a["question_id"], a["prompt"], a["label"], a["image"]) for a in answers] == \
                       [(r["question_id"], r["text"], r["label"], r["image"]) for r in rows], path
                assert {a["category"] for a in answers} == {split}
                assert all(isinstance(a["tags"], list) and (variant == "baseline") == (not a["tags"]) for a in answers)
                again = pope_metrics([a["text"] for a in answers], [a["label"] for a in answers])
                assert again == metrics["pope"][group]["per_split"][split], path
                by_tags = metrics["pope"][group].get("by_tags", {}).get(split)
                assert (by_tags is None) == (variant == "baseline")
                if by_tags:
                    assert by_tags == pope_by_tags([a["text"] for a in answers], [a["label"] for a in answers],
                                                   [a["prompt"] for a in answers], [a["tags"] for a in answers])
                    assert by_tags["named"]["n"] + by_tags["unnamed"]["n"] + by_tags["unmatched"] == len(answers)
                for a in answers:
                    if a["text"].strip():
                        llava = "no" if _llava_reads_no(a["text"].strip()) else "yes"
                        ours = pope_metrics([a["text"]], [a["label"]])
                        assert (ours["tp"] + ours["fp"] == 1) == (llava == "yes"), a


def test_tuna_eval_prints_the_report_path_and_tracks_an_eval_report_run(evaluated: World,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient

    cfg = evaluated.cfg
    assert main(["eval", "--config", str(SMOKE), f"run.data_dir={cfg.data_dir}", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == 2  # nothing re-evaluated; only the report is written
    assert f"report: {cfg.data_dir / 'eval' / 'report' / 'report.md'}" in out
    client = MlflowClient(track.tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.track.experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`tuna.stage` = 'eval-report'")
    assert runs and runs[0].info.status == "FINISHED"
    assert any(Path(a.path).name == "report.md" for a in client.list_artifacts(runs[0].info.run_id, "report"))


def test_report_draws_probes_and_explains_what_is_missing(evaluated: World, tmp_path: Path) -> None:
    """Only the metrics files (no model): the tuner figure is explained away, an unevaluated variant is
    named, probes.json (with a malformed entry) becomes a figure; with nothing evaluated it is one error."""
    for variant in VARIANTS:
        dst = tmp_path / "eval" / variant
        dst.mkdir(parents=True)
        shutil.copy(evaluated.cfg.data_dir / "eval" / variant / "metrics.json", dst)
    (tmp_path / "eval" / "probes.json").write_text(json.dumps({
        "linear_probe": {"id": {"clip": 0.9, "connector": 0.7, "tuna": 0.8}, "ood": {"clip": 0.8, "connector": 0.4, "tuna": 0.6}},
        "linear_probe_std": {"id": {"connector": 0.01}}, "n": {"id": {"images": 300}, "ood": {"images": 300}},
        "claims": {"connector_below_clip": {"id": True, "ood": False}}, "note": "not a probe", "broken": {"id": "n/a"}}))
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    report = write_report(cfg, [*VARIANTS, "random"], log=quiet)
    text = report.read_text(encoding="utf-8")
    assert "not evaluated, left out: random" in text and "No tuner-weight figure: no trained TUNA model" in text
    links = _links(text)
    assert "probes.png" in links and "tuner_weights.png" not in links
    for name in links:
        _check_png(report.parent / name)
    section = text.split("## Probes")[1].split("## Files")[0]
    assert "| linear_probe | connector | 70.0 +- 1.0 | 40.0 |" in section
    assert "- claims / connector_below_clip: id true, ood false" in section  # other results listed as they are
    assert "| n |" not in section and "| broken |" not in section  # counts and malformed entries are not shares
    probes = json.loads((report.parent / "metrics.json").read_text())["probes"]
    assert set(probes) == {"linear_probe"} and probes["linear_probe"]["id"]["clip"] == 0.9
    with pytest.raises(EvalError, match="no evaluated variant"):
        write_report(load_recipe(SMOKE, [f"run.data_dir={tmp_path / 'none'}"]), VARIANTS, log=quiet)


def test_swap_line_reads_direct_prompting_whatever_the_key_order() -> None:
    from tuna.eval.suite import table

    row = {"finer_b@B_fine_em": 0.78, "finer_b@B_attrseek_fine_em": 0.0, "finer_b@A_fine_em": 0.01,
           "finer_b@A_attrseek_fine_em": 0.5, "finer_b@none_fine_em": 0.0}
    line = table({"tuna": row}).splitlines()[-1]
    assert line.endswith("A 1.0, B 78.0, none 0.0"), line


def _finer(fine: float) -> dict[str, dict[str, float]]:
    return {"direct": {"fine_em": fine, "fine_em_word": fine, "coarse_em": fine}}


def test_domain_b_column_follows_the_recipes_swapped_in_datastore_name() -> None:
    from tuna.eval.evaluate import headline
    from tuna.eval.report import _swap
    from tuna.eval.suite import table

    tuna = {"swap_datastore": "forest", "finer": {"b@web": _finer(0.05), "b@forest": _finer(0.81), "b@none": _finer(0.02)}}
    base = {"swap_datastore": None, "finer": {"b@none": _finer(0.03)}}
    legacy = {"finer": {"b@A": _finer(0.1), "b@B": _finer(0.7), "b@none": _finer(0.0)}}  # written before the name was kept
    assert headline(tuna)["finer_b_fine_em"] == 0.81 and headline(base)["finer_b_fine_em"] == 0.03
    assert headline(legacy)["finer_b_fine_em"] == 0.7
    assert "finer_b_fine_em" not in headline({"swap_datastore": None, "finer": {"id": _finer(0.5)}})  # no domain B asked
    lines = table({"tuna": headline(tuna), "baseline": headline(base)}).splitlines()
    assert "FINER B fine EM (swapped-in datastore)" in lines[0]
    header = [c.strip() for c in lines[0].split("|")]
    col = header.index("FINER B fine EM (swapped-in datastore)")
    assert [line.split("|")[col].strip() for line in lines[2:4]] == ["81.0", "3.0"]
    assert lines[-1].endswith("forest 81.0, none 2.0, web 5.0")
    assert list(_swap({"tuna": tuna})) == ["web", "forest", "none"]  # the order eval asked them: own, swapped-in, none
