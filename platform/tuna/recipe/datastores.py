"""The recipe's ``datastores:`` section: every Milvus datastore `tuna index` builds, declared by name.

Each entry names the web corpus its rows come from (``A`` and ``B`` = ``data.web_A`` / ``data.web_B``, any other
name = an entry of ``data.corpora``), what a row's value is (``tags`` mined from the corpus's captions, or the
``captions`` themselves: the captions ablation) and, optionally, index settings of its own on top of the
``index:`` section. A new domain is a new entry here (and its corpus under ``data.corpora``), not a code change;
``model.datastore`` names the one TUNA trains with, ``eval.swap_datastore`` the domain-swap target.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from tuna.recipe.checks import require as _require
from tuna.recipe.data import CORPUS_NAME as NAME  # datastore names too: a Milvus collection name and a folder name
from tuna.recipe.sections import IndexType, Metric

Values = Literal["tags", "captions"]


@dataclass(frozen=True)
class IndexOverride:
    """Index settings of one datastore that differ from the ``index:`` section (null = the section's value)."""

    index_type: IndexType | None = None
    metric: Metric | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef: int | None = None
    nlist: int | None = None
    nprobe: int | None = None
    top_k: int | None = None

    def values(self) -> dict[str, object]:
        """The settings this datastore overrides (non-null fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class DatastoreConfig:
    """One datastore: its corpus, its values, its own index settings."""

    corpus: str = "A"        # web corpus: A, B (data.web_A / web_B) or a data.corpora entry
    values: Values = "tags"  # tags (mined from the corpus's captions) | captions (the caption itself)
    index: IndexOverride = field(default_factory=IndexOverride)

    def __post_init__(self) -> None:
        _require(bool(NAME.fullmatch(self.corpus)) and self.corpus != "clip", "corpus",
                 f"must name a web corpus (A, B or a data.corpora entry; not the CLIP-only 'clip'), got {self.corpus!r}")


def default_datastores() -> dict[str, DatastoreConfig]:
    """The world's three: A (domain A's tags), B (domain B's tags: the swap) and A_captions (the ablation)."""
    return {"A": DatastoreConfig("A", "tags"), "B": DatastoreConfig("B", "tags"),
            "A_captions": DatastoreConfig("A", "captions")}


__all__ = ["NAME", "DatastoreConfig", "IndexOverride", "Values", "default_datastores"]
