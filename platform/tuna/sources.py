"""The declared inputs of a run: each corpus, eval set and text the recipe's ``data:`` section names.

Every step reads its inputs through here, never from a fixed world path. A source left at ``path: null`` is the
bundled world's copy (`tuna world` writes it; :mod:`tuna.layout` knows where); a source with a path is the
user's data in the same upstream format. ``sources(recipe)["web_A"].path`` is the folder or file to read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuna.errors import ConfigError
from tuna.layout import Layout, layout

if TYPE_CHECKING:
    from tuna.recipe import Recipe

EVAL_SPLITS = {"pope": ("id", "ood"), "finer": ("id", "ood", "b"), "mme": ("id", "ood"), "captions": ("id", "ood")}
# tasks with validation splits (world.sizes.finer_val, pope_val, mme_val; CHAIR's captions: the POPE validation scenes)
VALIDATED = ("finer", "pope", "mme", "captions")
WEB_DOMAINS = ("A", "B", "clip")
EVAL_SOURCES = tuple(f"{task}_{split}" for task, splits in EVAL_SPLITS.items() for split in splits)


@dataclass(frozen=True)
class Source:
    """One resolved input: its name in ``data:``, where it is, its format, and whether the world provides it."""

    name: str
    path: Path
    format: str
    from_world: bool
    image_root: Path | None = None   # declared ``images``; None = the format's default (:attr:`images`)

    @property
    def folder(self) -> Path:
        """The folder holding the source (the path itself for folder sources, its parent for file sources)."""
        if self.path.is_dir():
            return self.path
        return self.path if self.path.suffix == "" and not self.path.is_file() else self.path.parent

    @property
    def images(self) -> Path:
        """The folder the source's image names resolve against: the declared ``images``, else the folder itself
        for MME (images live in the subtask folders) and ``images/`` beside the data for the other formats."""
        if self.image_root is not None:
            return self.image_root
        return self.folder if self.format == "mme" else self.folder / "images"


def _world_path(lay: Layout, name: str) -> Path:
    """Where the bundled world writes source ``name``."""
    if name.startswith("web_"):
        return lay.world_web(name.removeprefix("web_"))
    fixed = {"alignment": lay.world_alignment, "instruction": lay.world_instruction, "text": lay.world_text(),
             "taxonomy": lay.taxonomy}
    if name in fixed:
        return fixed[name]
    task, _, split = name.rpartition("_")
    if task == "captions_val":   # CHAIR needs scenes and their objects: the POPE validation images and instances
        return lay.world_validation("pope", split)
    if task.endswith("_val"):
        return lay.world_validation(task.removesuffix("_val"), split)
    return lay.world_eval(task, split)


def file_digest(path: Path) -> str | None:
    """sha256 (16 hex digits) of one file's bytes; None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def listing_digest(path: Path) -> str | None:
    """A digest of a user's input (every file's relative name, size and mtime): changes when the data changes."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


class SourceDisabled(ConfigError):
    """A step asked for a source the recipe disables (``enabled: false``)."""


class Sources:
    """The resolved ``data:`` section of one recipe."""

    def __init__(self, recipe: Recipe) -> None:
        self._recipe = recipe
        self._layout = layout(recipe)

    def __getitem__(self, name: str) -> Source:
        declared = self._recipe.data.source(name)
        if declared is None:
            raise ConfigError(f"unknown data source {name!r}; the recipe's data: section declares "
                              f"{', '.join(self._recipe.data.names())}")
        if not declared.enabled:
            raise SourceDisabled(f"data.{name} is disabled (enabled: false) but this step reads it; give its path "
                                 f"(data.{name}.path) or turn off what needs it")
        fmt = self._recipe.data.format_of(name)
        images = Path(declared.images).expanduser() if declared.images else None
        if declared.path is None:
            return Source(name, _world_path(self._layout, name), fmt, True, images)
        return Source(name, Path(declared.path).expanduser(), fmt, False, images)

    def web(self, domain: str) -> Source:
        """Web corpus ``domain``: A, B, clip (the CLIP-only crawl) or a ``data.corpora`` entry."""
        if domain not in (*WEB_DOMAINS, *self._recipe.data.corpora):
            raise ConfigError(f"web corpus {domain!r} is not declared; use one of "
                              f"{', '.join([*WEB_DOMAINS, *self._recipe.data.corpora])} or declare it under data.corpora")
        return self[f"web_{domain}"]

    def eval_set(self, task: str, split: str, validation: bool = False) -> Source:
        """Eval set ``task`` (pope, finer, mme, captions) of ``split`` (id, ood; finer also b); or, with
        ``validation``, the validation split of FINER, POPE, MME or captions (CHAIR)."""
        if split not in EVAL_SPLITS.get(task, ()):
            raise ConfigError(f"no eval set {task}/{split}; declared: "
                              + ", ".join(f"{t}/{s}" for t, ss in EVAL_SPLITS.items() for s in ss))
        if validation and task not in VALIDATED:
            raise ConfigError(f"only {', '.join(VALIDATED[:-1])} and {VALIDATED[-1]} have validation splits, not {task}")
        return self[f"{task}_val_{split}" if validation else f"{task}_{split}"]

    def has(self, name: str) -> bool:
        """True when source ``name`` is declared and enabled (a disabled one is not part of this run)."""
        declared = self._recipe.data.source(name)
        return declared is not None and declared.enabled

    def splits(self, task: str, validation: bool = False) -> list[str]:
        """The enabled splits of eval set ``task`` (or of its validation splits), in order."""
        return [s for s in EVAL_SPLITS.get(task, ()) if self.has(f"{task}_val_{s}" if validation else f"{task}_{s}")]

    def all(self) -> list[Source]:
        """Every enabled source."""
        return [self[name] for name in self._recipe.data.names() if self.has(name)]

    def digest(self, *names: str) -> str | None:
        """What the named inputs are now: the world manifest's digest when the world provides them all (the world
        is regenerated as a whole), else a digest over each input (the world's part by its manifest)."""
        items = [self[n] for n in names if self.has(n)]
        world = file_digest(self._layout.world_manifest)
        if len(items) == len(names) and all(s.from_world for s in items):
            return world
        parts = [f"{s.name}={world if s.from_world else listing_digest(s.path)}" for s in items]
        parts += [f"{n}=disabled" for n in names if not self.has(n)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def from_world(self) -> bool:
        """True when any input is the bundled world's copy (then `tuna world` must run first)."""
        return any(s.from_world for s in self.all())


def sources(recipe: Recipe) -> Sources:
    """The inputs ``recipe`` declares, resolved."""
    return Sources(recipe)


__all__ = ["EVAL_SOURCES", "EVAL_SPLITS", "WEB_DOMAINS", "Source", "SourceDisabled", "Sources", "file_digest", "listing_digest", "sources"]
