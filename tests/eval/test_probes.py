"""Alignment diagnostics: the probe / mutual-kNN functions on hand-checkable synthetic features, and
`run_probes` on the smoke models trained by the real `tuna train` (the `trained` fixture)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuna.eval.probes import (
    FEATURES,
    attribute_sentence,
    caption,
    linear_probe,
    mutual_knn,
    nearest_label,
    recovered,
    split_halves,
)
from tuna.layout import layout


def _blobs(n_per: int, classes: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 5
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


# ----------------------------------------------------------------------------------------- halves


def test_split_halves_are_seeded_stratified_and_disjoint() -> None:
    labels = ["a"] * 5 + ["b"] * 4 + ["c"]
    train, test = split_halves(labels, seed=3)
    again = split_halves(labels, seed=3)
    assert train.tolist() == again[0].tolist() and test.tolist() == again[1].tolist()
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    lab = np.array(labels)
    assert (lab[train] == "a").sum() == 3 and (lab[test] == "a").sum() == 2  # ceil(5/2) to train
    assert (lab[train] == "b").sum() == 2 and (lab[test] == "b").sum() == 2
    assert "c" in lab[train] and "c" not in lab[test]                      # a singleton is never scored


# ----------------------------------------------------------------------------------------- linear probe


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_linear_probe_separable_is_perfect_and_random_is_chance(backend: str) -> None:
    x, y = _blobs(n_per=20, classes=5, dim=8, spread=0.3)
    train, test = split_halves(y, seed=0)
    assert linear_probe(x, y, train, test, backend=backend) >= 0.98
    rng = np.random.default_rng(1)
    noise, labels = rng.normal(size=(400, 8)), rng.integers(0, 4, size=400)   # features carry no label
    train, test = split_halves(labels, seed=0)
    assert linear_probe(noise, labels, train, test, backend=backend) < 0.4   # chance 0.25


def test_linear_probe_never_sees_the_test_half() -> None:
    """Labels of the test half are scrambled: a probe that trained on them would score above 0."""
    x, y = _blobs(n_per=20, classes=4, dim=6, spread=0.2)
    train, test = split_halves(y, seed=0)
    y_bad = y.copy()
    y_bad[test] = (y[test] + 1) % 4                                        # every test label now wrong for its blob
    assert linear_probe(x, y_bad, train, test) == 0.0


def test_high_dimensional_probe_equals_the_full_fit() -> None:
    """d > n: fitting in the span of the training rows (the representer shortcut) predicts as the full fit."""
    from sklearn.linear_model import LogisticRegression

    from tuna.eval.probes import _fit_predict

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 300)), rng.integers(0, 3, size=40)
    test = rng.normal(size=(25, 300))
    full = LogisticRegression(C=0.1, max_iter=5000, tol=1e-8).fit(x, y).predict(test)
    assert (_fit_predict(x, y, test, 0.1, "sklearn") == full).mean() >= 0.96


# ----------------------------------------------------------------------------------------- mutual kNN


def test_mutual_knn_identical_neighbourhoods_score_one_and_unrelated_score_chance() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))                          # a rotation keeps every cosine
    assert mutual_knn(a, a) == pytest.approx(1.0)
    assert mutual_knn(a, 3.0 * a @ q) == pytest.approx(1.0)
    unrelated = mutual_knn(a, rng.normal(size=(200, 32)))
    assert unrelated < 0.12                                                # chance k / (N - 1) = 0.05
    with pytest.raises(ValueError):
        mutual_knn(a, a[:10])


def test_mutual_knn_caps_k_to_the_sample_count() -> None:
    a = np.eye(4)
    assert mutual_knn(a, a, k=10) == pytest.approx(1.0)                     # k = 3: everyone else


# ----------------------------------------------------------------------------------------- helpers


def test_nearest_label_and_recovered_by_hand() -> None:
    keys = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert nearest_label(np.array([[0.9, 0.1], [0.2, 3.0]]), keys, ["x", "y"]) == ["x", "y"]
    assert recovered(0.8, 0.4, 0.6) == 0.5
    assert recovered(0.8, 0.4, 0.3) == -0.25
    assert recovered(0.4, 0.5, 0.9) is None                                # the connector lost nothing
    assert recovered(None, 0.5, 0.9) is None


def test_texts_follow_the_world_phrasing() -> None:
    rec = {"fine-level-lbl": "zedul", "instance-attributes": {"colour": "orange", "pattern": "plain", "size": "large"}}
    assert caption(rec) == "a large orange zedul"
    prefix, full = attribute_sentence("ozel", ["arrow shape", "wavy pattern", "no mark", "orange accents"])
    assert prefix == "An ozel"
    assert full == "An ozel has an arrow shape with a wavy pattern and no mark; its accents are orange."
    assert attribute_sentence("zedul", ["red", "round"])[1] == "A zedul has red, round."


# ----------------------------------------------------------------------------------------- on trained models


def test_run_probes_on_the_trained_smoke_models(trained) -> None:
    from tuna.eval.probes import run_probes
    from tuna.eval.suite import probe

    lines: list[str] = []
    result = run_probes(trained.cfg, log=lines.append)
    saved = json.loads(layout(trained.cfg).probes.read_text())
    assert saved["fingerprint"] == result["fingerprint"] and saved["linear_probe"] == result["linear_probe"]
    for split in ("id", "ood"):
        lp = result["linear_probe"][split]
        assert set(lp) == set(FEATURES)
        for name in ("clip", "clip_embed", "connector", "baseline_connector", "tags", "tuna"):
            assert 0.0 <= lp[name] <= 1.0, (split, name, lp[name])
        mk = result["mutual_knn"][split]
        assert {"clip", "clip_vs_lm", "connector", "baseline_connector", "tuna", "chance"} <= set(mk)
        assert all(0.0 <= v <= 1.0 for v in mk.values())
        kp = result["knowledge_probe"][split]
        assert {"image_clip", "text_clip", "text_lm", "text_lm_baseline", "chance"} <= set(kp)
        assert all(0.0 <= v <= 1.0 for v in kp.values())
        n = result["n"][split]
        assert n["train"] + n["test"] == n["images"] - n["skipped"] and n["test"] > 0
    rec = result["loss_recovered"]
    assert rec is None or np.isfinite(rec)
    assert result["loss_recovered_reference"] == "clip_embed"
    assert set(result["claims"]) == {"clip_embed", "clip", "clip_grid"}
    assert result["summary"].startswith("probes: ID probe") and "\n" not in result["summary"]
    assert len(lines) == 2                                                   # one log line per split
    # Up to date: the suite does not recompute.
    assert "up to date" in probe(trained.cfg)
