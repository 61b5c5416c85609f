"""Fixtures of the pipeline tests: an MLflow store of their own (the session worlds stay untouched)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow ($MLFLOW_TRACKING_URI wins over the recipe) at a sqlite store under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("TUNA_MLFLOW_PARENT_RUN_ID", raising=False)
    return uri
