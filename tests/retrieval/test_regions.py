"""Region retrieval's pure parts: cutting cells from preprocessed pixels and merging their tags."""

from __future__ import annotations

import pytest
import torch

from support import SMOKE
from tuna.errors import ConfigError
from tuna.recipe import load_recipe
from tuna.retrieval.regions import merge_region_values, region_pixels


def test_cells_are_cut_row_by_row_and_resized_back() -> None:
    pixels = torch.zeros(2, 3, 8, 8)
    for n, (r, q) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        pixels[1, :, r:r + 4, q:q + 4] = n + 1            # image 1: quadrant n holds the value n + 1
    cells = region_pixels(pixels, 2)
    assert cells.shape == (8, 3, 8, 8) and cells.dtype == pixels.dtype
    assert torch.all(cells[:4] == 0)                      # image 0's four cells first
    assert [float(c.mean()) for c in cells[4:]] == [1.0, 2.0, 3.0, 4.0]
    ramp = torch.arange(9.0).reshape(1, 1, 3, 3).expand(1, 3, 3, 3)   # 3 px do not split evenly: cells of 2 and 1 px
    assert region_pixels(ramp, 2).shape == (4, 3, 3, 3)
    with pytest.raises(ValueError, match="grid must be >= 2"):
        region_pixels(pixels, 1)
    with pytest.raises(ValueError, match=r"must be \(batch, channels, height, width\)"):
        region_pixels(pixels[0], 2)


def test_whole_image_tags_come_first_then_each_regions_best_new_tag() -> None:
    whole = [("fox", 2.0), ("red fox", 1.5), ("wolf", 0.9), ("dog", 0.5), ("cat", 0.1)]
    regions = [[("fox", 1.0), ("tree", 0.8)], [("bowl", 0.7)], [], [("fox", 0.9), ("red fox", 0.5)]]
    assert merge_region_values(whole, regions, 9) == [*whole, ("tree", 0.8), ("bowl", 0.7)]   # 4th region: nothing new
    assert merge_region_values(whole, regions, 6) == [("fox", 2.0), ("red fox", 1.5), ("tree", 0.8), ("bowl", 0.7),
                                                      ("wolf", 0.9), ("dog", 0.5)]   # 2 whole slots, then refilled
    with pytest.raises(ValueError, match="4 tag slots cannot hold"):
        merge_region_values(whole, regions, 4)


def test_the_recipe_checks_the_grid_against_the_tag_slots() -> None:
    assert load_recipe(SMOKE, ["model.region_grid=2", "model.num_tags=9"]).model.region_grid == 2
    with pytest.raises(ConfigError, match="region_grid.*0 \\(whole image only\\) or 2..4"):
        load_recipe(SMOKE, ["model.region_grid=1"])
    with pytest.raises(ConfigError, match="raise num_tags above 4"):
        load_recipe(SMOKE, ["model.region_grid=2", "model.num_tags=4"])
