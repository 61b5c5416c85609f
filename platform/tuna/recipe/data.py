"""The recipe's ``data:`` section: every input a run reads, by path and format.

Each entry is ``{path, format, images}``. A null ``path`` means the bundled world's copy (what `tuna world` writes under
``<run.data_dir>/world``); a path (relative to where `tuna` runs, or absolute) points the run at data of your own
in the same format; ``images`` (optional) is the folder the entry's image names resolve against (LLaVA's
``--image_folder``, COCO's ``val2014/`` for POPE; default: ``images/`` beside the file). :mod:`tuna.sources`
resolves the entries; nothing else reads an input's location. The checkpoints are ``model.vision_tower`` and
``model.language_model`` (LLaVA's own argument names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from tuna.recipe.checks import require as _require

# format -> what it is (the upstream format the loaders read)
FORMATS = {
    "webdataset": "WebDataset shards (*.tar of {key}.jpg|png|webp, .txt caption, .json; a .parquet beside each) as "
                  "img2dataset writes them: a folder, a glob or a brace list ({00000..00099}.tar)",
    "llava_json": "LLaVA conversation JSON ([{id, image?, conversations: [{from, value}, ...]}]); images under `images`",
    "text_jsonl": "JSON lines with a 'text' field (LM pre-training text)",
    "taxonomy_json": "the bundled world's taxonomy (domains, classes, parents)",
    "pope": "POPE question files (*_pope_{random,popular,adversarial}.json: JSON lines of question_id, image, text, "
            "label); images under `images` (COCO val2014)",
    "finer_jsonl": "a FINER .jsonl (FINER's unified-*-combined.jsonl or the world's finer.jsonl) or its folder",
    "mme": "an MME release folder: per subtask, image + .txt side by side, or images/ + questions_answers_YN/",
    "coco_captions": "a COCO folder: annotations/{captions,instances}_<split>.json + <split>/ (or the world's "
                     "captions.json, instances.json, images/); CHAIR reads only the instances",
}
CORPUS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
# source -> the formats it accepts (today: the format the world writes)
KINDS = {
    "web_A": ("webdataset",), "web_B": ("webdataset",), "web_clip": ("webdataset",),
    "alignment": ("llava_json",), "instruction": ("llava_json",),
    "text": ("text_jsonl",), "taxonomy": ("taxonomy_json",),
    "pope_id": ("pope",), "pope_ood": ("pope",),
    "finer_id": ("finer_jsonl",), "finer_ood": ("finer_jsonl",), "finer_b": ("finer_jsonl",),
    "finer_val_id": ("finer_jsonl",), "finer_val_ood": ("finer_jsonl",), "finer_val_b": ("finer_jsonl",),
    "pope_val_id": ("pope",), "pope_val_ood": ("pope",),
    "mme_id": ("mme",), "mme_ood": ("mme",), "mme_val_id": ("mme",), "mme_val_ood": ("mme",),
    "captions_id": ("coco_captions",), "captions_ood": ("coco_captions",),
    "captions_val_id": ("coco_captions",), "captions_val_ood": ("coco_captions",),
}


@dataclass(frozen=True)
class SourceConfig:
    """One input: where it is (null = the bundled world's copy), its format and its image folder; or, with
    ``enabled: false``, no such input in this run (real data has no held-out split or second domain: the steps
    that read it skip it, and a step that cannot do without it refuses in one line)."""

    path: str | None = None
    format: str = ""   # empty = the source's own format (KINDS)
    images: str | None = None   # the folder image names resolve against; null = the format's default
    enabled: bool = True        # false = this run has no such input

    def __post_init__(self) -> None:
        _require(self.enabled or (self.path is None and self.images is None), "enabled",
                 "a disabled source has no path or images; drop them or set enabled: true")
        _require(self.path is None or bool(self.path.strip()), "path", "must be a non-empty path or null (the world's copy)")
        _require(self.images is None or bool(self.images.strip()), "images",
                 "must be a non-empty folder or null (images/ beside the data)")
        _require(self.format == "" or self.format in FORMATS, "format",
                 f"must be one of {', '.join(FORMATS)}; got {self.format!r}")


def _source() -> SourceConfig:
    return SourceConfig()


@dataclass(frozen=True)
class DataConfig:
    """Every input of a run (see :data:`KINDS`); all default to the bundled world's copies."""

    web_A: SourceConfig = field(default_factory=_source)          # web corpus of domain A: CLIP, mining, datastore A
    web_B: SourceConfig = field(default_factory=_source)          # web corpus of domain B: the swap datastore
    web_clip: SourceConfig = field(default_factory=_source)       # extra CLIP-only pairs (world.sizes.clip_web)
    alignment: SourceConfig = field(default_factory=_source)      # stage 1 (LCS-558K style)
    instruction: SourceConfig = field(default_factory=_source)    # stage 2 (LLaVA-Instruct style)
    text: SourceConfig = field(default_factory=_source)           # tiny-LM pre-training text
    taxonomy: SourceConfig = field(default_factory=_source)       # class names and parents (world only)
    pope_id: SourceConfig = field(default_factory=_source)
    pope_ood: SourceConfig = field(default_factory=_source)
    finer_id: SourceConfig = field(default_factory=_source)
    finer_ood: SourceConfig = field(default_factory=_source)
    finer_b: SourceConfig = field(default_factory=_source)
    finer_val_id: SourceConfig = field(default_factory=_source)   # validation splits: choose settings here
    finer_val_ood: SourceConfig = field(default_factory=_source)
    finer_val_b: SourceConfig = field(default_factory=_source)
    pope_val_id: SourceConfig = field(default_factory=_source)    # POPE validation splits (world.sizes.pope_val)
    pope_val_ood: SourceConfig = field(default_factory=_source)
    mme_id: SourceConfig = field(default_factory=_source)
    mme_ood: SourceConfig = field(default_factory=_source)
    mme_val_id: SourceConfig = field(default_factory=_source)     # MME validation splits (world.sizes.mme_val)
    mme_val_ood: SourceConfig = field(default_factory=_source)
    captions_id: SourceConfig = field(default_factory=_source)    # CHAIR
    captions_ood: SourceConfig = field(default_factory=_source)
    captions_val_id: SourceConfig = field(default_factory=_source)  # CHAIR validation (world: the POPE validation scenes)
    captions_val_ood: SourceConfig = field(default_factory=_source)
    corpora: dict[str, SourceConfig] = field(default_factory=dict)  # more web corpora by name: datastores of new domains

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "corpora":
                continue
            src: SourceConfig = getattr(self, f.name)
            _require(src.format in ("", *KINDS[f.name]), f"{f.name}.format",
                     f"{f.name} reads {' or '.join(KINDS[f.name])}; got {src.format!r}")
        for name, src in self.corpora.items():
            _require(bool(CORPUS_NAME.fullmatch(name)) and name not in ("A", "B", "clip"), f"corpora.{name}",
                     "a corpus name is a letter then letters, digits or _ (A, B and clip are web_A, web_B, web_clip)")
            _require(src.path is not None, f"corpora.{name}.path",
                     "the world writes no such corpus: give the path of its WebDataset shards (folder, glob or brace list)")
            _require(src.format in ("", "webdataset"), f"corpora.{name}.format",
                     f"a web corpus reads webdataset; got {src.format!r}")

    def source(self, name: str) -> SourceConfig | None:
        """Declared source ``name`` (``web_<corpus>`` for a :attr:`corpora` entry); None when not declared."""
        if name in KINDS:
            return getattr(self, name)
        if name.startswith("web_"):
            return self.corpora.get(name.removeprefix("web_"))
        return None

    def names(self) -> list[str]:
        """Every declared source: the fixed ones, then ``web_<corpus>`` per :attr:`corpora` entry."""
        return [*KINDS, *(f"web_{c}" for c in self.corpora)]

    def format_of(self, name: str) -> str:
        """The format of source ``name`` (its declared one, else the one its kind reads)."""
        declared = self.source(name)
        return (declared.format if declared else "") or KINDS.get(name, ("webdataset",))[0]


__all__ = ["CORPUS_NAME", "FORMATS", "KINDS", "DataConfig", "SourceConfig"]
