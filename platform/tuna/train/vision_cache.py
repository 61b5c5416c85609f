"""Training on a frozen vision tower without running it every step (``train.cache_vision``).

A stage whose vision tower does not train sees the same CLIP outputs for an image in every epoch, yet the
forward pass recomputes them per batch (with ``model.vision_crops`` each image's n x n crops are resized bicubic and
encoded too: on mini a third of TUNA's stage-2 step and half the baseline's). Here every distinct training image is encoded once before the first step:
rank r encodes images r, r + world, ... and the ranks exchange what they encoded, so each holds all of them.
The batches then carry ``image_outputs`` instead of pixels; what the model computes from them is unchanged.
Memory: images x (visual tokens x vision width + projection width) values, so it suits the CPU recipes, not
LLaVA-665K on CLIP-L.

The encodings are also kept on disk (``train/vision/<tower key>.pt``), so the other stages and variants that read
the same images through the same frozen tower (TUNA and the baseline, every ablation) load them instead of encoding
again. The key digests the tower's and visual projection's weights, the visual settings and the dtype; an entry
counts only while its image file keeps the size and modification time it was encoded at.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tuna.errors import TrainError
from tuna.staging import staged_file

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


def tower_key(model: Any, dtype: torch.dtype) -> str:
    """A digest of everything ``model.encode_image`` computes from besides the pixels: the vision tower's and the
    visual projection's weights, ``vision_feature_layer`` / ``_select_strategy`` / ``_pool``, ``vision_crops``,
    and the cached values' dtype."""
    cfg = model.config
    digest = hashlib.sha256(repr((cfg.vision_feature_layer, cfg.vision_feature_select_strategy,
                                  cfg.vision_feature_pool, cfg.vision_crops, str(dtype))).encode())
    for prefix, module in (("vision_model", model.clip.vision_model), ("visual_projection", model.clip.visual_projection)):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _stamp(image: Path) -> tuple[int, int]:
    stat = image.stat()
    return stat.st_size, stat.st_mtime_ns


def load_store(path: Path) -> dict[Path, Outputs]:
    """The encodings saved at ``path`` whose image files are unchanged since (none when there is no such file)."""
    if not path.is_file():
        return {}
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        rows = zip(saved["images"], saved["stamps"], saved["patches"], saved["features"], strict=True)
    except Exception as err:  # noqa: BLE001 - a damaged store is re-encoded, never trusted
        raise TrainError(f"train.cache_vision: the vision store {path} is unreadable ({type(err).__name__}); "
                         f"delete it and the images are encoded again") from err
    out: dict[Path, Outputs] = {}
    for name, stamp, patches, features in rows:
        image = Path(name)
        if image.is_file() and _stamp(image) == tuple(stamp):
            out[image] = (patches, features)
    return out


def save_store(path: Path, encoded: dict[Path, Outputs], keep: int = 4) -> None:
    """Write ``encoded`` to ``path`` (atomically) and delete all but the ``keep`` newest stores beside it."""
    images = sorted(p for p in encoded if p.is_file())
    if not images:
        return
    with staged_file(path) as tmp:
        torch.save({"images": [str(p) for p in images], "stamps": [list(_stamp(p)) for p in images],
                    "patches": torch.stack([encoded[p][0] for p in images]),
                    "features": torch.stack([encoded[p][1] for p in images])}, tmp)
    stores = sorted(path.parent.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in stores[keep:]:
        old.unlink(missing_ok=True)


__all__ = ["PRECISION_DTYPES", "batch_outputs", "check_cacheable", "encode_all", "load_store", "save_store", "tower_key"]
