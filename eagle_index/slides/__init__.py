"""Slides to EAGLE tiles: open any OpenSlide format, trust MPP only when it is sane, find
tissue, read 224 px tiles at 2.0 µm/px fast and reproducibly, draw QC thumbnails.

Typical use::

    with open_slide(path, mpp_override=None, settings=settings.tiling) as slide:
        for batch in iter_tissue_batches(slide, batch_size=64):   # one pass, tissue only
            model(batch.images)                                   # (B, 224, 224, 3) uint8 RGB
        again = read_tiles(slide, x_um, y_um)                     # same pixels, by µm

Imports of this package pull in OpenCV and NumPy but not OpenSlide (loaded on first open).
"""

from eagle_index.slides.mpp import MppResult, resolve_mpp
from eagle_index.slides.reader import Slide, open_slide
from eagle_index.slides.thumbnail import make_thumbnail
from eagle_index.slides.tiling import (
    TileBatch,
    TileGrid,
    candidate_grid,
    full_grid,
    iter_tile_batches,
    iter_tissue_batches,
    read_level,
    read_tiles,
    tissue_grid,
)
from eagle_index.slides.tissue import TissueMask, edge_ratio, gray_l, keep_tiles, tissue_mask

__all__ = [
    "MppResult",
    "Slide",
    "TileBatch",
    "TileGrid",
    "TissueMask",
    "candidate_grid",
    "edge_ratio",
    "full_grid",
    "gray_l",
    "iter_tile_batches",
    "iter_tissue_batches",
    "keep_tiles",
    "make_thumbnail",
    "open_slide",
    "read_level",
    "read_tiles",
    "resolve_mpp",
    "tissue_grid",
    "tissue_mask",
]
