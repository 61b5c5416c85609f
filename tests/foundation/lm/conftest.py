"""Fixtures for the language-model tests: the session's smoke world, and one tiny LM trained on it per session."""

from __future__ import annotations

from typing import Any

import pytest

from lm_support import lm_config
from support import World, quiet


@pytest.fixture(scope="session")
def trained(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The smoke LM trained once (seed 0) beside a link to the session world: config, manifest, folder."""
    from tuna.foundation.lm import train_lm

    cfg = lm_config(world, tmp_path_factory.mktemp("lm"))
    manifest = train_lm(cfg, progress=False, log=quiet)
    return {"cfg": cfg, "manifest": manifest, "path": cfg.data_dir / "lm"}
