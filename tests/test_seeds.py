"""`tuna run --seeds N`: one run per seed in its own folder, then mean +- spread per variant and metric.

The pipeline run itself is `tuna run` (tests/test_runner.py runs it for real); here a stand-in writes each
seed's eval summary so the study's bookkeeping is checked by hand-computed numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import SMOKE
from tuna.cli import main
from tuna.errors import ConfigError
from tuna.recipe import Recipe, load_recipe
from tuna.seeds import Spread, aggregate, run_seeds, seed_recipes, separated

FIVE = {0: 0.60, 1: 0.70, 2: 0.80}


def _fake_run(r: Recipe) -> None:
    """A run that leaves the eval summary a real one writes: TUNA better than the baseline, by seed."""
    out = Path(r.run.data_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    s = r.run.seed
    rows = {"tuna": {"finer_ood_fine_em": FIVE[s], "mme_id_total": 100.0 + 10 * s},
            "baseline": {"finer_ood_fine_em": 0.1 * s}}
    (out / "summary.json").write_text(json.dumps(rows))


def test_each_seed_gets_its_own_folder_and_seed(tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}", "run.seed=4"])
    rs = seed_recipes(cfg, 3)
    assert [r.run.seed for r in rs] == [4, 5, 6]
    assert [r.run.data_dir for r in rs] == [str(tmp_path), str(tmp_path / "seeds/5"), str(tmp_path / "seeds/6")]
    assert rs[1].train == cfg.train and rs[1].world == cfg.world     # only the run section differs
    with pytest.raises(ConfigError, match="--seeds must be in 1..20, got 0"):
        seed_recipes(cfg, 0)


def test_study_writes_mean_std_and_range_per_variant(tmp_path: Path) -> None:
    cfg = load_recipe(SMOKE, [f"run.data_dir={tmp_path}"])
    agg = run_seeds(cfg, 3, _fake_run, log=lambda s: None)
    em = agg["tuna"]["finer_ood_fine_em"]
    assert (em.mean, em.low, em.high, em.n) == (pytest.approx(0.7), 0.6, 0.8, 3) and em.std == pytest.approx(0.1)
    assert agg["tuna"]["mme_id_total"].mean == pytest.approx(110.0)
    assert separated(em, agg["baseline"]["finer_ood_fine_em"])                  # 0.6 > 0.2: no overlap
    assert not separated(Spread(0.7, 0.1, 0.6, 0.8, 3), Spread(0.65, 0.1, 0.5, 0.7, 3))   # ranges overlap
    saved = json.loads((tmp_path / "eval/seeds.json").read_text())
    assert saved["seeds"] == [0, 1, 2] and saved["per_seed"]["2"]["baseline"]["finer_ood_fine_em"] == pytest.approx(0.2)
    table = (tmp_path / "eval/seeds.md").read_text()
    assert "| tuna | 70.0 ± 10.0 [60.0, 80.0] |" in table.replace(" | 110 ± 10 [100, 120]", "")
    assert (tmp_path / "seeds/2/eval/summary.json").is_file()


def test_a_seed_without_a_summary_stops_the_study_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import tuna.runner

    monkeypatch.setattr(tuna.runner, "run_all", lambda r, **kw: [])
    assert main(["run", "--config", str(SMOKE), "--seeds", "2", f"run.data_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed 0: the run wrote no" in err[0]


def test_aggregate_of_one_seed_has_no_spread() -> None:
    agg = aggregate({0: {"tuna": {"pope_id_acc": 0.5}}})
    assert agg["tuna"]["pope_id_acc"] == Spread(0.5, 0.0, 0.5, 0.5, 1)
