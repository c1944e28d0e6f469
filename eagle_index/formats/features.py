"""Tile-feature `.h5` files from STAMP v1 and STAMP v2, read into one shape.

Coordinates are normalised to micrometres, (x, y) = top-left, level-0 origin:
- STAMP v2 stores float32 (x, y) in µm already (`unit == "um"`).
- STAMP v1 stores integer pixels of the resized 2 µm/px slide image and, depending on the
  code path that wrote it, as (x, y) or as (row, col). The EAGLE demo files are (row, col);
  we detect the axis order from the row ordering (see `detect_v1_axes`) unless told.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from eagle_index.errors import InputError
from eagle_index.formats.h5util import open_h5, read_dataset, text_attr

V1_DEFAULT_MPP = 2.0  # STAMP-Benchmark / EAGLE: 448 µm over 224 px
V1_DEFAULT_TILE_PX = 224

AxisOrder = Literal["auto", "xy", "yx"]


@dataclass
class TileFeatures:
    path: Path
    layout: str  # "stamp-v1" or "stamp-v2"
    feats: np.ndarray  # float32 (N, D)
    x_um: np.ndarray  # float64 (N,)
    y_um: np.ndarray
    tile_um: float
    extractor: str | None

    def __len__(self) -> int:
        return len(self.feats)

    def coord_keys(self) -> np.ndarray:
        """Integer µm (x, y) keys for matching rows of two files of the same tiling."""
        return np.stack([np.rint(self.x_um), np.rint(self.y_um)], axis=1).astype(np.int64)


def detect_v1_axes(coords: np.ndarray) -> Literal["xy", "yx"]:
    """STAMP v1 writes rows in its loop order: row-major over the image.

    If the first column changes slowest (constant runs), it is the row index, i.e. (y, x);
    if the first column changes fastest, it is x. Ambiguous single-row/column files: (x, y).
    """
    if len(coords) < 2:
        return "xy"
    first_changes = np.count_nonzero(np.diff(coords[:, 0]))
    second_changes = np.count_nonzero(np.diff(coords[:, 1]))
    return "yx" if first_changes < second_changes else "xy"


def read_tile_features(path: Path, v1_axes: AxisOrder = "auto", v1_mpp: float = V1_DEFAULT_MPP) -> TileFeatures:
    path = Path(path)
    with open_h5(path) as handle:
        attrs = {k: handle.attrs[k] for k in handle.attrs}
        name = "feats" if "feats" in handle else "patch_embeddings" if "patch_embeddings" in handle else None
        if name is None:
            raise InputError(f"{path}: no 'feats' dataset (not a STAMP tile-feature file)")
        feats = np.asarray(read_dataset(handle, name, path))
        coords = np.asarray(read_dataset(handle, "coords", path))
    if feats.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"{path}: 'feats' {feats.shape} / 'coords' {coords.shape} are not (N, D) / (N, 2)")
    if len(feats) != len(coords):
        raise InputError(f"{path}: {len(feats)} feature rows but {len(coords)} coordinates")
    if len(feats) == 0:
        raise InputError(f"{path}: no tiles")
    if not np.isfinite(feats).all():
        raise InputError(f"{path}: dataset {name!r} contains NaN or infinite values")
    extractor = text_attr(attrs.get("extractor"))
    unit = text_attr(attrs.get("unit"))
    if unit == "um" or "tile_size_um" in attrs:
        tile_um = float(attrs.get("tile_size_um", attrs.get("tile_size", 0)) or 0)
        if tile_um <= 0:
            raise InputError(f"{path}: STAMP v2 file without a tile size attribute")
        coords = coords.astype(np.float64)
        return TileFeatures(path, "stamp-v2", feats.astype(np.float32), coords[:, 0], coords[:, 1], tile_um, extractor)
    axes = detect_v1_axes(coords) if v1_axes == "auto" else v1_axes
    px = coords.astype(np.float64)
    x_px, y_px = (px[:, 1], px[:, 0]) if axes == "yx" else (px[:, 0], px[:, 1])
    return TileFeatures(path, "stamp-v1", feats.astype(np.float32), x_px * v1_mpp, y_px * v1_mpp, V1_DEFAULT_TILE_PX * v1_mpp, extractor)


def align_rows(reference: TileFeatures, other: TileFeatures) -> np.ndarray:
    """Row index into `other` for every row of `reference`, matched by µm coordinates.

    Row order differs between files (STAMP v2 writes in thread completion order), so rows are
    never matched by position. Every reference tile must be present in `other`.
    """
    lookup = {tuple(key): row for row, key in enumerate(other.coord_keys())}
    if len(lookup) != len(other):
        raise InputError(f"{other.path}: duplicate tile coordinates")
    index = np.empty(len(reference), dtype=np.int64)
    missing = 0
    for row, key in enumerate(reference.coord_keys()):
        found = lookup.get(tuple(key))
        if found is None:
            missing += 1
            index[row] = -1
        else:
            index[row] = found
    if missing:
        raise InputError(f"{other.path}: {missing} of {len(reference)} tiles of {reference.path.name} have no features here (coordinates differ)")
    return index
