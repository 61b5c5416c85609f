"""Compile the versioned pipeline (``tuna pipeline compile``): the ``@dsl.pipeline`` of ``tuna_pipelines.tuna``
(the repository's ``pipelines/`` folder, installed as a package) built with the recipe's ``cluster:`` section, written
as ``tuna-<version>[<suffix>].yaml``.

The version is the package version plus the git short sha (:func:`pipeline_version`, e.g. ``0.1.0+abc1234``); the
suffix names a non-default cluster build (:attr:`PipelineOptions.suffix`). The output is deterministic: a golden copy
compiled from the default recipe with :data:`GOLDEN_VERSION` is kept in ``pipelines/compiled/`` and compared in the
tests.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import Any

from tuna import __version__
from tuna.kfp.options import PIPELINE_NAME, PipelineError, PipelineOptions
from tuna.recipe import ClusterConfig, Recipe


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def pipeline_version() -> str:
    """``<package version>+<git short sha>`` (``.dirty`` appended when tracked files differ from the commit)."""
    sha = _git("rev-parse", "--short=7", "HEAD")
    if not sha:
        return f"{__version__}+unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{__version__}+{sha}{'.dirty' if dirty else ''}"


def compiled_dir() -> Path:
    """Default output folder: ``compiled/`` beside the pipeline package (``pipelines/compiled`` in a checkout)."""
    import tuna_pipelines

    return Path(tuna_pipelines.__file__).resolve().parent / "compiled"


def build_pipeline(options: PipelineOptions) -> Any:
    """The ``@dsl.pipeline`` function of ``tuna_pipelines.tuna`` for ``options``."""
    from tuna_pipelines.tuna import build_pipeline as build

    return build(options)


def compiled_name(options: PipelineOptions) -> str:
    return f"{PIPELINE_NAME}-{options.version}{options.suffix}.yaml"


def compile_pipeline(out_dir: str | Path, version: str, cluster: ClusterConfig | None = None,
                     recipe: Recipe | None = None) -> Path:
    """Compile the pipeline with the recipe's ``cluster`` section (default: ``ClusterConfig()``, the CPU build) and
    its declared datastores (``recipe``; default: the world's three) to ``<out_dir>/tuna-<version>[<suffix>].yaml``
    (byte-identical for the same code, version, cluster section and datastores)."""
    from kfp import compiler

    if "/" in version or version in (".", ".."):
        raise PipelineError(f"version {version!r} cannot be part of a file name")
    options = (PipelineOptions.of(recipe, version, cluster) if recipe is not None
               else PipelineOptions(cluster=cluster or ClusterConfig(), version=version))
    pipeline = build_pipeline(options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / compiled_name(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return path


__all__ = ["build_pipeline", "compile_pipeline", "compiled_dir", "compiled_name", "pipeline_version"]
