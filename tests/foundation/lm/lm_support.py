"""Helpers for the language-model tests."""

from __future__ import annotations

from pathlib import Path

from support import SMOKE, World
from tuna.recipe import Recipe, load_recipe


def lm_config(world: World, data_dir: Path, *overrides: str) -> Recipe:
    """The smoke recipe writing under ``data_dir``, reading the session world through a ``world`` symlink."""
    data_dir.mkdir(parents=True, exist_ok=True)
    link = data_dir / "world"
    if not link.exists():
        link.symlink_to(world.root, target_is_directory=True)
    return load_recipe(SMOKE, [f"run.data_dir={data_dir}", *overrides])
