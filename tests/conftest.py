"""Shared fixtures: the smoke world, generated once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import FLUENT, HEAD32, World, make_prepared, make_world
from tuna.retrieval.server import MilvusServer, MilvusServerError, server_executable


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The smoke world (seed 0), generated once for the whole session; tests must not modify it."""
    return make_world(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A second smoke world with the encoder, tags, datastores and LM built: what training reads. Tests that
    train write their own outputs under it (train/<variant>/...) and must not touch its inputs."""
    return make_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def trained(prepared: World) -> World:
    """``prepared`` with TUNA (stage 1 on ZeRO-2, stage 2 on ZeRO-3 built partitioned) and the LLaVA baseline trained by the
    real `tuna train` on 2 DeepSpeed CPU ranks; the launches' outputs are checked by the training tests."""
    import subprocess
    import sys

    from support import SMOKE

    base = [sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "all"]
    for variant, extra in (("tuna", ["train.stage2.zero_stage=3", "train.zero3_init=true"]), ("baseline", [])):
        done = subprocess.run([*base, "--variant", variant, f"run.data_dir={prepared.cfg.data_dir}", *extra],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"tuna train --variant {variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stdout + done.stderr
    return prepared


def _train_head32(factory: pytest.TempPathFactory, name: str, *overrides: str) -> World:
    """The smoke world with a one-head LM (``HEAD32``: a head size vLLM's CPU attention takes) and ``overrides``,
    prepared and TUNA trained by the real `tuna train`."""
    import subprocess
    import sys

    from support import SMOKE

    world = make_prepared(factory.mktemp(name), *HEAD32, *overrides)
    done = subprocess.run([sys.executable, "-m", "tuna.cli", "train", "--config", str(SMOKE), "--stage", "all", "--variant",
                           "tuna", f"run.data_dir={world.cfg.data_dir}", *HEAD32, *overrides], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"tuna train failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return world


@pytest.fixture(scope="session")
def trained_head32(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The smoke world with a one-head LM, prepared and TUNA trained (~1.5 min): what the vLLM tests serve."""
    return _train_head32(tmp_path_factory, "prepared-head32")


@pytest.fixture(scope="session")
def trained_fluent(tmp_path_factory: pytest.TempPathFactory) -> World:
    """``trained_head32`` with the LM and stage 2 trained longer (``FLUENT``, ~40 s more): it answers in words that differ
    per question (the smoke training answers every question '::::::::'), so equal answers mean something."""
    return _train_head32(tmp_path_factory, "prepared-fluent", *FLUENT)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A real Milvus 2.3 standalone (the PyPI `milvus` wheel) on a free 127.0.0.1 port, started once per session
    and stopped by PID at the end, even when a test failed; skipped with one line when the wheel is missing."""
    import shutil

    try:
        server_executable()
    except MilvusServerError as err:
        pytest.skip(str(err))
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server"))
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(server.root / "bin", ignore_errors=True)  # the unpacked binary (~250 MB); logs and data stay
