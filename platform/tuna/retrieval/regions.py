"""Region retrieval: besides the whole image, each cell of a ``grid`` x ``grid`` split of it queries the datastore.

Why: a whole-image embedding retrieves neighbours of the image's dominant object, so in a scene of several objects
the others go unnamed. Measured on mini's POPE validation splits (`bench/diagnose_existence.py tags`, answering
"yes" iff a tag names the asked object): whole image, 5 tags: accuracy ID 0.59 / OOD 0.586 (yes-ratio 0.15);
plus the best tag of each quadrant (grid 2, 9 tags): 0.729 / 0.709 (yes-ratio 0.33).

Cells are cut from the preprocessed pixel tensor and resized back to the encoder's input size (bilinear), the same
function in training, evaluation and the served retrieval step, so every path retrieves the same tags.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuna.model.vision_features import resize

Values = list[tuple[str, float]]


def region_pixels(pixels: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) preprocessed images -> (B * grid², C, H, W): each image's cells, row by row, each resized back
    to H x W."""
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (batch, channels, height, width), got shape {tuple(pixels.shape)}")
    if grid < 2:
        raise ValueError(f"grid must be >= 2 cells per side, got {grid}")
    b, c, h, w = pixels.shape
    hs = [round(i * h / grid) for i in range(grid + 1)]
    ws = [round(i * w / grid) for i in range(grid + 1)]
    cells = [pixels[:, :, hs[r]:hs[r + 1], ws[q]:ws[q + 1]] for r in range(grid) for q in range(grid)]
    resized = [resize(cell, h, w, "bilinear") for cell in cells]
    return torch.stack(resized, dim=1).reshape(b * grid * grid, c, h, w)


def merge_region_values(whole: Values, regions: Sequence[Values], slots: int) -> Values:
    """The tags of one image: the whole image's best values first (``slots`` minus one per region), then for each
    region its best value not already listed (none when all of its values are), then, in slots a region left
    empty, the whole image's next values."""
    if slots <= len(regions):
        raise ValueError(f"{slots} tag slots cannot hold the whole image's tags and one per region ({len(regions)})")
    out = list(whole[:slots - len(regions)])
    seen = {v for v, _ in out}
    for values in regions:
        best = next(((v, s) for v, s in values if v not in seen), None)
        if best is not None:
            out.append(best)
            seen.add(best[0])
    out += [(v, s) for v, s in whole[slots - len(regions):] if v not in seen][:slots - len(out)]
    return out


__all__ = ["merge_region_values", "region_pixels"]
