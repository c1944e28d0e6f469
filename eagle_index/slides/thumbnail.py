"""Slide thumbnails with the tissue mask outlined and, optionally, the tile boxes drawn.

For QC and the UI: the green outline is the mask that decided which tiles were read (so a
missed tissue region is visible at a glance); blue boxes are the tiles kept.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from eagle_index.slides.reader import Slide
from eagle_index.slides.tiling import TileGrid
from eagle_index.slides.tissue import classify_tissue, read_overview, tissue_mask

MASK_COLOR = (0, 170, 0)
TILE_COLOR = (0, 80, 255)


def _thumbnail_rgb(slide: Slide, max_size: int) -> np.ndarray:
    """RGB no larger than max_size on its long side, read from the coarsest adequate level."""
    big_enough = [i for i, dims in enumerate(slide.level_dimensions) if max(dims) >= max_size]
    level = max(big_enough, key=lambda i: slide.level_downsamples[i]) if big_enough else 0
    factor = max(1, max(slide.level_dimensions[level]) // max_size)
    rgb = read_overview(slide, level, factor)
    width0, height0 = slide.dimensions
    scale = min(1.0, max_size / max(width0, height0))
    size = (max(1, round(width0 * scale)), max(1, round(height0 * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _mask_on_thumbnail(slide: Slide, rgb: np.ndarray) -> np.ndarray:
    """The tiling mask sampled at thumbnail pixel centres (computed on the thumbnail if no MPP)."""
    h, w = rgb.shape[:2]
    if slide.mpp is None:
        return classify_tissue(rgb)
    mask = tissue_mask(slide)
    um_per_thumb_x = slide.dimensions[0] * slide.mpp / w
    um_per_thumb_y = slide.dimensions[1] * slide.mpp / h
    cols = np.minimum(((np.arange(w) + 0.5) * um_per_thumb_x / mask.px_um).astype(np.int64), mask.mask.shape[1] - 1)
    rows = np.minimum(((np.arange(h) + 0.5) * um_per_thumb_y / mask.px_um).astype(np.int64), mask.mask.shape[0] - 1)
    return mask.mask[np.ix_(rows, cols)]


def make_thumbnail(slide: Slide, grid: TileGrid | None = None, max_size: int = 1024,
                   show_mask: bool = True) -> Image.Image:
    """An RGB thumbnail (long side ≤ max_size) with the mask outline and `grid`'s tile boxes."""
    rgb = np.ascontiguousarray(_thumbnail_rgb(slide, max_size))
    if show_mask:
        mask = _mask_on_thumbnail(slide, rgb).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, MASK_COLOR, 1)
    if grid is not None and len(grid):
        scale_x = rgb.shape[1] / slide.dimensions[0]
        scale_y = rgb.shape[0] / slide.dimensions[1]
        side_px = grid.tile_um / grid.mpp
        for x, y in zip(grid.x_px, grid.y_px):
            x0, y0 = int(math.floor(x * scale_x)), int(math.floor(y * scale_y))
            x1 = int(math.ceil((x + side_px) * scale_x)) - 1
            y1 = int(math.ceil((y + side_px) * scale_y)) - 1
            cv2.rectangle(rgb, (x0, y0), (max(x0, x1), max(y0, y1)), TILE_COLOR, 1)
    return Image.fromarray(rgb)
