"""Training on a frozen vision tower without running it every step (``train.cache_vision``).

A stage whose vision tower does not train sees the same CLIP outputs for an image in every epoch, yet the
forward pass recomputes them per batch (with ``model.vision_crops`` each image's n x n crops are resized bicubic and
encoded too: on mini a third of TUNA's stage-2 step and half the baseline's). Here every distinct training image is encoded once before the first step:
rank r encodes images r, r + world, ... and the ranks exchange what they encoded, so each holds all of them.
The batches then carry ``image_outputs`` instead of pixels; what the model computes from them is unchanged.
Memory: images x (visual tokens x vision width + projection width) values, so it suits the CPU recipes, not
LLaVA-665K on CLIP-L.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tuna.errors import TrainError

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Outputs = tuple[torch.Tensor, torch.Tensor]   # (P, Dv) patch features, (Dt,) image feature of one image


def check_cacheable(stage: int, vision_lr_scale: float, partitioned: Any) -> None:
    """Refuse ``train.cache_vision`` where the tower's outputs would change or cannot be computed up front."""
    if vision_lr_scale > 0:
        raise TrainError(f"train.cache_vision: stage {stage} trains the vision tower (train.stage{stage}.vision_lr_scale="
                         f"{vision_lr_scale}), so its outputs change every step; set train.cache_vision=false")
    if partitioned:
        raise TrainError("train.cache_vision: the model is built partitioned (train.zero3_init) and no rank holds the "
                         "vision tower whole before training; set train.cache_vision=false or train.zero3_init=false")


@torch.no_grad()
def encode_all(model: Any, pixels: Callable[[Sequence[Path]], torch.Tensor], images: Sequence[Path], rank: int,
               world: int, gather: Callable[[Any], list[Any]], dtype: torch.dtype = torch.float32,
               batch_size: int = 64) -> dict[Path, Outputs]:
    """``model.encode_image`` of every image in ``images`` (``pixels`` reads a list of them into a batch), split
    over the ``world`` ranks and exchanged with ``gather`` (all ranks' objects, in rank order); values in ``dtype``."""
    mine = list(images)[rank::world]
    done: dict[Path, Outputs] = {}
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        patches, features = model.encode_image(pixels(chunk))
        done.update((p, (a.to(dtype).clone(), f.to(dtype).clone())) for p, a, f in zip(chunk, patches, features))
    out: dict[Path, Outputs] = {}
    for part in gather(done) if world > 1 else [done]:
        out.update(part)
    missing = [p for p in images if p not in out]
    if missing:
        raise TrainError(f"train.cache_vision: {len(missing)} images were not encoded (first: {missing[0]}); "
                         f"set train.cache_vision=false")
    return out


def batch_outputs(cache: dict[Path, Outputs], images: Sequence[Path]) -> Outputs:
    """The cached ``encode_image`` outputs of one batch: (B, P, Dv) and (B, Dt)."""
    rows = [cache[p] for p in images]
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


__all__ = ["PRECISION_DTYPES", "batch_outputs", "check_cacheable", "encode_all"]
