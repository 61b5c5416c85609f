"""Which CLIP hidden-state tokens the connector reads: the patch grid (optionally pooled), with or without CLS."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


__all__ = ["pool_grid", "select_features"]
