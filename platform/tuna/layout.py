"""Where a run's files live: the only module that joins paths onto ``run.data_dir``.

One run (one recipe) owns one folder, ``run.data_dir``::

    world/                      the bundled world (`tuna world`): taxonomy, corpora, eval sets in upstream formats
    encoder/                    the tiny CLIP (`tuna encoder`), unless model.vision_tower names a checkpoint
    lm/                         the tiny LM + tokenizer (`tuna lm`), unless model.language_model names one
    tags/<domain>/              mined tags (`tuna mine`): tags.parquet, manifest.json, quarantine.jsonl
    datastores/<name>/          one datastore (`tuna index`): manifest.json, quarantine.jsonl, milvus.db/ (Milvus Lite)
    train/<variant>/stage<N>/   one training stage (`tuna train`): checkpoints/, model/, loss.jsonl, metrics.json
    train/recipes/              the resolved recipes the training ranks read
    train/retrieved/, train/reading/   caches of retrieved tags and reading-data images
    train/vision/               the frozen vision tower's encodings of the training images (train.cache_vision)
    eval/<variant>/metrics.json every number of `tuna eval` (answers/: POPE answers, LLaVA answer files); eval/table.md, eval/probes.json, eval/report/
    eval/validation/            `tuna eval --validation`; eval/retrieved/: cached retrievals
    serve/<variant>/            the exported Triton repository (`tuna export`); serve/logs/: tritonserver logs
    serve/<variant>-hf/, -llava/  Hugging Face exports (`tuna export --format hf|llava`)
    kfp/                        kfp.local task outputs and status; mlflow/: the local MLflow store

Inputs are read through :mod:`tuna.sources` (a recipe may point them anywhere); the world's own folders below are
where `tuna world` writes them and what the sources default to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuna.recipe import Recipe

MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"


@dataclass(frozen=True)
class Layout:
    """The folders and files of one run under ``root`` (= ``run.data_dir``)."""

    root: Path

    # ------------------------------------------------------------------ the bundled world (a provider of sources)
    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def world_manifest(self) -> Path:
        return self.world / MANIFEST

    @property
    def taxonomy(self) -> Path:
        return self.world / "taxonomy.json"

    def world_web(self, domain: str) -> Path:
        """The world's WebDataset shards of web corpus ``domain`` (A, B, or clip for CLIP-only pairs)."""
        return self.world / "web" / domain

    @property
    def world_alignment(self) -> Path:
        return self.world / "alignment" / "pretrain.json"

    @property
    def world_instruction(self) -> Path:
        return self.world / "instruction" / "instruct.json"

    def world_text(self) -> Path:
        return self.world / "text" / "corpus.jsonl"

    def world_eval(self, task: str, split: str) -> Path:
        """The world's eval set folder: ``task`` in pope, finer, mme, captions; ``split`` id, ood (finer: b too)."""
        return self.world / "eval" / task / split

    def world_validation(self, task: str, split: str) -> Path:
        """The world's validation split (FINER only today), disjoint from the eval split."""
        return self.world / "val" / task / split

    # ------------------------------------------------------------------ foundation models
    @property
    def encoder(self) -> Path:
        return self.root / "encoder"

    @property
    def lm(self) -> Path:
        return self.root / "lm"

    # ------------------------------------------------------------------ tags and datastores
    @property
    def tags_root(self) -> Path:
        return self.root / "tags"

    def tags(self, domain: str) -> Path:
        return self.tags_root / domain

    @property
    def datastores(self) -> Path:
        return self.root / "datastores"

    def datastore(self, name: str) -> Path:
        """Where datastore ``name``'s manifest and quarantine list live (and its Milvus Lite folder, locally)."""
        return self.datastores / name

    def milvus_lite(self, name: str) -> Path:
        return self.datastore(name) / "milvus.db"

    # ------------------------------------------------------------------ training
    def stage(self, variant: str, stage: int) -> Path:
        return self.root / "train" / variant / f"stage{stage}"

    def model(self, variant: str, stage: int = 2) -> Path:
        """The consolidated Hugging Face model of ``variant`` after ``stage``."""
        return self.stage(variant, stage) / "model"

    def stage_recipe(self, variant: str, stage: int) -> Path:
        """The resolved recipe the ranks of one stage read."""
        return self.root / "train" / "recipes" / f"{variant}-stage{stage}.yaml"

    def train_cache(self, name: str) -> Path:
        """A cached retrieval for training data (``train/retrieved/<name>.json``)."""
        return self.root / "train" / "retrieved" / f"{name}.json"

    def reading_image(self, name: str) -> Path:
        return self.root / "train" / "reading" / name

    def vision_store(self, key: str) -> Path:
        """The frozen vision tower's saved encodings of the training images (``train.cache_vision``)."""
        return self.root / "train" / "vision" / f"{key}.pt"

    # ------------------------------------------------------------------ evaluation
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_metrics(self, variant: str) -> Path:
        return self.eval / variant / "metrics.json"

    @property
    def eval_table(self) -> Path:
        return self.eval / "table.md"

    @property
    def probes(self) -> Path:
        return self.eval / "probes.json"

    @property
    def report(self) -> Path:
        return self.eval / "report"

    @property
    def validation(self) -> Path:
        return self.eval / "validation"

    def eval_cache(self, name: str) -> Path:
        """A cached retrieval for evaluation (``eval/retrieved/<name>.json``)."""
        return self.eval / "retrieved" / f"{name}.json"

    # ------------------------------------------------------------------ serving, pipelines, tracking
    @property
    def serve_root(self) -> Path:
        return self.root / "serve"

    def export(self, variant: str) -> Path:
        """The export folder of ``variant`` (its Triton repository is ``model_repository/`` inside)."""
        return self.serve_root / variant

    def repository(self, variant: str) -> Path:
        return self.export(variant) / "model_repository"

    def hf_export(self, variant: str, fmt: str) -> Path:
        """A Hugging Face export of ``variant`` (``fmt`` hf or llava): beside the Triton export, which is replaced whole."""
        return self.serve_root / f"{variant}-{fmt}"

    @property
    def serve_logs(self) -> Path:
        """tritonserver logs: beside, not inside, the exported (DVC-tracked) folders."""
        return self.serve_root / "logs"

    @property
    def image_logs(self) -> Path:
        """`tuna image` build logs (one per Dockerfile target)."""
        return self.root / "images"

    @property
    def kfp(self) -> Path:
        return self.root / "kfp"

    @property
    def mlflow(self) -> Path:
        """The local MLflow store (absolute: the sqlite URI needs it)."""
        return self.root.resolve() / "mlflow"


def layout(recipe: Recipe) -> Layout:
    """The layout of ``recipe``'s run (``run.data_dir``)."""
    return Layout(Path(recipe.run.data_dir))


def encoder_path(cfg: Recipe) -> str:
    """Where the run's encoder comes from: ``model.vision_tower`` when set, else ``<data_dir>/encoder``."""
    return cfg.model.vision_tower or str(layout(cfg).encoder)


def lm_path(cfg: Recipe) -> str:
    """Where the run's LM comes from: ``model.language_model`` or ``model.llava`` when set, else ``<data_dir>/lm``."""
    return cfg.model.language_model or cfg.model.llava or str(layout(cfg).lm)


__all__ = ["MANIFEST", "QUARANTINE", "Layout", "encoder_path", "layout", "lm_path"]
