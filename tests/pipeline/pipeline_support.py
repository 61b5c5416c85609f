"""Helpers of the pipeline tests: the components by step, fake KFP output artifacts, the compiled IR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from support import REPO

COMPONENTS = REPO / "components"
GOLDEN = REPO / "pipelines" / "compiled" / "tuna-golden.yaml"


def component(step: str) -> Any:
    """The KFP component object of components/<step>/component.py (the one pipelines/tuna.py wires)."""
    from tuna_pipelines.tuna import COMPONENTS

    return COMPONENTS[step]


def out(kind: str, folder: Path, name: str) -> Any:
    """A KFP output artifact (dsl.Dataset, dsl.Model, dsl.Metrics or dsl.Markdown) backed by a file under ``folder``."""
    from kfp import dsl

    return getattr(dsl, kind)(name=name, uri=str(folder / name))


def art(kind: str, metadata: dict[str, Any], uri: str = "") -> Any:
    """An input artifact carrying ``metadata`` (what an upstream task published)."""
    from kfp import dsl

    return getattr(dsl, kind)(name=kind.lower(), uri=uri, metadata=dict(metadata))


def load_ir(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, Kubernetes platform spec) of a compiled pipeline YAML."""
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"] if len(docs) > 1 else {}
    return spec, platform


def tasks_by_display_name(spec: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """display name -> (task key, task spec) over the root DAG and the exit handler's body."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for key, t in dag["tasks"].items():
            found[t.get("taskInfo", {}).get("name", key)] = (key, t)
    return found
