"""The ``plan:`` section: what `tuna plan` needs beyond the rest of the recipe.

The declared architecture sizes let `tuna plan` build the real model on the meta device without reading any
checkpoint: ``vision`` + ``clip_text`` (the CLIP towers), ``lm`` (the causal LM). A part left null is read from
the ``config.json`` of the checkpoint folder the recipe names (``model.vision_tower`` / ``model.language_model`` /
``model.llava``, or the world's ``<data_dir>/encoder`` and ``<data_dir>/lm``); hub ids are never fetched.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuna.recipe.checks import require as _require


def _heads_divide(width: int, heads: int, key: str) -> None:
    _require(heads >= 1 and width % heads == 0, key, f"{heads} heads do not divide the width {width}; pick a divisor")


@dataclass(frozen=True)
class VisionSizes:
    """A CLIP vision tower (ViT): CLIP ViT-L/14-336 is 1024 wide, 24 layers, 16 heads, MLP 4096, 336 px, 14 px patches."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    layers: int = 24
    heads: int = 16
    image_size: int = 336
    patch_size: int = 14

    def __post_init__(self) -> None:
        _heads_divide(self.hidden_size, self.heads, "heads")
        _require(self.image_size % self.patch_size == 0, "patch_size",
                 f"{self.patch_size} does not divide image_size {self.image_size}")


@dataclass(frozen=True)
class TextSizes:
    """A CLIP text tower: CLIP ViT-L/14's is 768 wide, 12 layers, 12 heads, MLP 3072, 49408 tokens, 77 positions."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    layers: int = 12
    heads: int = 12
    vocab_size: int = 49408
    max_positions: int = 77
    projection_dim: int = 768       # the joint image-text space (the datastore key size)

    def __post_init__(self) -> None:
        _heads_divide(self.hidden_size, self.heads, "heads")


@dataclass(frozen=True)
class LMSizes:
    """A Llama-style causal LM: Vicuna-7B v1.5 is 4096 wide, 32 layers, 32 heads (32 KV), MLP 11008, 32000 tokens."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    vocab_size: int = 32000
    max_positions: int = 4096
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        _heads_divide(self.hidden_size, self.heads, "heads")
        _require(self.heads % self.kv_heads == 0, "kv_heads", f"{self.kv_heads} must divide heads {self.heads}")


@dataclass(frozen=True)
class PlanConfig:
    """`tuna plan`: declared sizes (null = read the checkpoint folder's config.json), ranks and GPU memory."""

    vision: VisionSizes | None = None
    clip_text: TextSizes | None = None
    lm: LMSizes | None = None
    gpus: int | None = None          # ranks sharing ZeRO state; None = cluster nodes x GPUs per node (train.ranks on CPU)
    gpu_memory_gib: float = 80.0     # memory of one GPU, what the table's "fits" column compares with

    def __post_init__(self) -> None:
        _require(self.gpus is None or self.gpus >= 1, "gpus", f"must be >= 1 or null, got {self.gpus}")
        _require(self.gpu_memory_gib > 0, "gpu_memory_gib", f"must be > 0, got {self.gpu_memory_gib}")


__all__ = ["LMSizes", "PlanConfig", "TextSizes", "VisionSizes"]
