"""Write a slide's tile coordinates (and optionally the exact tile pixels) to HDF5.

Layout (one file per slide, written to a temp file and renamed, so a reader never sees half
a file):
  coords     float64 (N, 2)  top-left (x, y) in µm from the level-0 origin (as STAMP v2)
  coords_px  int64   (N, 2)  top-left (x, y) in level-0 pixels
  images     uint8   (N, tile_px, tile_px, 3) RGB - only when asked: the pixels the models see
Rows are in row-major grid order (y outer, x inner). Attributes record the scale and how the
tiles were made (unit, tile_size_um, tile_size_px, mpp, mpp_source, level, filter, Canny).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eagle_index.config import TilingSettings
from eagle_index.errors import InputError
from eagle_index.slides.reader import Slide
from eagle_index.slides.tiling import TileGrid, candidate_grid, iter_tissue_batches, tissue_grid


def _attrs(slide: Slide, grid: TileGrid, settings: TilingSettings) -> dict:
    return {
        "slide": str(slide.path), "format": slide.format, "unit": "um",
        "tile_size_um": float(grid.tile_um), "tile_size_px": int(grid.tile_px),
        "mpp": float(grid.mpp), "mpp_source": grid.mpp_source, "level": int(grid.level),
        "level_box_px": int(grid.level_box_px), "order": "row-major (y outer, x inner)",
        "resize_filter": "cv2.INTER_AREA", "canny_low": settings.canny_low, "canny_high": settings.canny_high,
        "min_edge_ratio": settings.min_edge_ratio, "width_px": slide.dimensions[0], "height_px": slide.dimensions[1],
    }


def _kept_subset(candidates: TileGrid, x_px: np.ndarray, y_px: np.ndarray) -> TileGrid:
    """The candidates at the given level-0 positions (a subsequence, so order is kept)."""
    stride = int(candidates.x_px.max(initial=0)) + 1
    keep = np.isin(candidates.y_px * stride + candidates.x_px, y_px * stride + x_px)
    return candidates.subset(keep)


def write_tiles_h5(out: str | Path, slide: Slide, settings: TilingSettings | None = None,
                   candidates: TileGrid | None = None, images: bool = False) -> TileGrid:
    """Tile the slide (one pass) and write the HDF5 file atomically; returns the grid written."""
    import h5py

    from eagle_index.atomic import atomic_path

    s = settings or slide.settings
    out = Path(out)
    candidates = candidates if candidates is not None else candidate_grid(slide, s)
    try:
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as handle:
                if images:
                    shape = (s.tile_px, s.tile_px, 3)
                    data = handle.create_dataset("images", shape=(0, *shape), dtype=np.uint8,
                                                 maxshape=(None, *shape), chunks=(1, *shape))
                    xs, ys = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
                    for batch in iter_tissue_batches(slide, s, candidates=candidates):
                        start = data.shape[0]
                        data.resize(start + len(batch), axis=0)
                        data[start:] = batch.images
                        xs.append(batch.x_px)
                        ys.append(batch.y_px)
                    grid = _kept_subset(candidates, np.concatenate(xs), np.concatenate(ys))
                else:
                    grid = tissue_grid(slide, s, candidates=candidates)
                handle.create_dataset("coords", data=np.stack([grid.x_um, grid.y_um], axis=1).reshape(-1, 2))
                handle.create_dataset("coords_px", data=np.stack([grid.x_px, grid.y_px], axis=1).reshape(-1, 2))
                handle.attrs.update(_attrs(slide, grid, s))
    except OSError as exc:
        raise InputError(f"{out}: cannot write tiles file: {' '.join(str(exc).split())}") from exc
    return grid
