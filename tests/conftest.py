"""Shared fixtures: the smoke world, generated once per test session."""

from __future__ import annotations

import pytest

from support import World, make_prepared, make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The smoke world (seed 0), generated once for the whole session; tests must not modify it."""
    return make_world(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A second smoke world with the encoder, tags, datastores and LM built: what training reads. Tests that
    train write their own outputs under it (train/<variant>/...) and must not touch its inputs."""
    return make_prepared(tmp_path_factory.mktemp("prepared"))
