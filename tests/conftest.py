"""Shared fixtures: the smoke world, generated once per test session."""

from __future__ import annotations

import pytest

from support import World, make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The smoke world (seed 0), generated once for the whole session; tests must not modify it."""
    return make_world(tmp_path_factory.mktemp("smoke"))
