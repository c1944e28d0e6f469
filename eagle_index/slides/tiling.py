"""The EAGLE tile grid of a slide, and fast, deterministic reads of its tiles.

Grid. Square tiles of ``tile_um = target_mpp * tile_px`` (448 µm), anchored at the level-0
origin, step = tile size, in **row-major order** (y outer, x inner); a tile's position in a
grid is its "tile row-major index" (the pipeline's tie-breaker). Column ``c`` starts at level-0
pixel ``x_px = round(c * tile_um / mpp)`` and ``x_um = x_px * mpp`` (within mpp/2 of
``c * tile_um``). Only complete tiles are used (as EAGLE/STAMP do): partial tiles at the right
and bottom borders are dropped, never padded.

Reads. Pixels come from the pyramid level whose µm/px is closest to, but not coarser than,
``target_mpp`` (1% slack, which saves reading a 4× larger level for an invisible 1% upscale).
A tile is the square of ``level_box_px`` level pixels at its level origin, resized to
``tile_px`` with one filter, ``cv2.INTER_AREA`` (pixel-area averaging; no resize when the box
already is ``tile_px``; with the opt-in ``dct_scaled_decode``, JPEG tiles of a level exactly
2/4/8× finer than the target are decoded at reduced scale instead: jpeg_scaled.py). Tiles of a
grid row are read as wide strips (one OpenSlide call per run of adjacent tiles) on a thread
pool, in bounded memory, and handed out in grid order.

Exactness. ``read_tiles`` reads one tile on its own and returns the very pixels the grid
reader gives for it. That holds because a level is only ever addressed at whole level
pixels: with an integer downsample, cropping a strip equals reading the tile alone; with a
non-integer downsample (where OpenSlide interpolates sub-pixel offsets) every tile is read
on its own in both paths. The DCT-scaled path decides per tile (alignment, decodable file
tiles, Canny guard band), from that tile's pixels alone, so it keeps the property.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Iterator

import cv2
import numpy as np

from eagle_index.config import TilingSettings
from eagle_index.slides.jpeg_scaled import DecodeError, ScaledLevel, scaled_level
from eagle_index.slides.reader import Slide
from eagle_index.slides.tissue import edge_ratio, keep_tiles, tissue_mask
from eagle_index.slides.tissue import mask_level as _mask_read_level

LEVEL_TOLERANCE = 0.01  # a level may be this much coarser than target_mpp and still be used
STRIP_MAX_PX = 4096  # widest strip (level pixels) read in one call
INFLIGHT_BYTES = 256 << 20  # bound on pixels held by queued and running reads
RESIZE_FILTER = cv2.INTER_AREA
DCT_CANNY_GUARD = 0.3  # relative edge-ratio margin around the Canny threshold (see _canny_band)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of one slide (row-major). Coordinates are top-left, level-0 px and µm."""

    x_px: np.ndarray  # int64 (N,)
    y_px: np.ndarray
    x_um: np.ndarray  # float64 (N,), = x_px * mpp
    y_um: np.ndarray
    col: np.ndarray  # int64 (N,) grid column / row of each tile
    row: np.ndarray
    tile_um: float
    tile_px: int
    level: int  # pyramid level the pixels are read from
    level_box_px: int  # side, in `level` pixels, of the square resized to tile_px
    mpp: float
    mpp_source: str
    n_cols: int  # complete tiles across / down the whole slide
    n_rows: int
    mask_level: int | None = None  # level the tissue mask came from (None: no mask used)

    def __len__(self) -> int:
        return int(self.x_px.shape[0])

    def subset(self, keep: np.ndarray) -> "TileGrid":
        """The tiles where `keep` (bool or positions) selects, order preserved."""
        return replace(self, x_px=self.x_px[keep], y_px=self.y_px[keep], x_um=self.x_um[keep],
                       y_um=self.y_um[keep], col=self.col[keep], row=self.row[keep])


@dataclass(frozen=True)
class TileBatch:
    """A batch of tile pixels (B, tile_px, tile_px, 3) uint8 RGB with their coordinates."""

    images: np.ndarray
    index: np.ndarray  # int64 (B,) positions in the grid (row-major tile index)
    x_px: np.ndarray
    y_px: np.ndarray
    x_um: np.ndarray
    y_um: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])


def read_level(slide: Slide, target_mpp: float) -> int:
    """The level closest to, but not coarser than, `target_mpp` (level 0 if all are coarser)."""
    mpp = slide.require_mpp()
    ok = [i for i, d in enumerate(slide.level_downsamples) if mpp * d <= target_mpp * (1 + LEVEL_TOLERANCE)]
    return max(ok, key=lambda i: slide.level_downsamples[i]) if ok else 0


def _round(values) -> np.ndarray:
    """Round half up to int64 (numpy's round-half-even would make coordinates parity-dependent)."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def full_grid(slide: Slide, settings: TilingSettings | None = None) -> TileGrid:
    """Every complete tile of the slide, tissue or not, row-major."""
    s = settings or slide.settings
    mpp = slide.require_mpp()
    width_um, height_um = slide.dimensions[0] * mpp, slide.dimensions[1] * mpp
    n_cols = int(np.floor(width_um / s.tile_um + 1e-9))
    n_rows = int(np.floor(height_um / s.tile_um + 1e-9))
    row, col = (a.ravel().astype(np.int64) for a in np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij"))
    x_px, y_px = _round(col * s.tile_um / mpp), _round(row * s.tile_um / mpp)
    level = read_level(slide, s.target_mpp)
    box = max(1, int(_round(s.tile_um / slide.level_mpp(level))))
    return TileGrid(x_px=x_px, y_px=y_px, x_um=x_px * mpp, y_um=y_px * mpp, col=col, row=row,
                    tile_um=float(s.tile_um), tile_px=s.tile_px, level=level, level_box_px=box,
                    mpp=mpp, mpp_source=slide.mpp_source, n_cols=n_cols, n_rows=n_rows)


def candidate_grid(slide: Slide, settings: TilingSettings | None = None, use_mask: bool = True) -> TileGrid:
    """Complete tiles the low-resolution mask cannot rule out (all of them without a mask).

    The mask is skipped when its level is not at least 2× coarser than the read level:
    reading it would cost about as much as reading the tiles themselves.
    """
    grid = full_grid(slide, settings)
    if not use_mask or len(grid) == 0:
        return grid
    if slide.level_downsamples[_mask_read_level(slide)[0]] < 2 * slide.level_downsamples[grid.level]:
        return grid
    mask = tissue_mask(slide)
    keep = mask.any_in_boxes(grid.x_um, grid.y_um, grid.tile_um)
    return replace(grid.subset(keep), mask_level=mask.level)


# -- reading ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reader:
    """Where a grid's tiles live in its read level, and how to turn them into tile pixels."""

    slide: Slide
    level: int
    box_px: int
    tile_px: int
    scaled: ScaledLevel | None = None  # DCT-scaled JPEG decoding of this level, where valid
    canny_band: tuple[float, float] = (0.0, 0.0)  # DCT tiles with an edge ratio in [lo, hi) are read in full
    settings: TilingSettings | None = None  # the Canny parameters of that check

    @classmethod
    def make(cls, slide: Slide, level: int, box_px: int, tile_px: int, settings: TilingSettings) -> "_Reader":
        scaled = scaled_level(slide, level, box_px, tile_px) if settings.dct_scaled_decode else None
        return cls(slide, level, box_px, tile_px, scaled, _canny_band(settings), settings)

    @property
    def down(self) -> float:
        return self.slide.level_downsamples[self.level]

    @property
    def integer_down(self) -> bool:
        return abs(self.down - round(self.down)) < 1e-9

    def level_origin(self, x_px: np.ndarray, y_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _round(np.asarray(x_px) / self.down), _round(np.asarray(y_px) / self.down)

    def read_strip(self, lx: int, ly: int, width: int) -> np.ndarray:
        location = (int(_round(lx * self.down)), int(_round(ly * self.down)))
        return self.slide.read_rgb(location, self.level, (width, self.box_px))

    def to_tile(self, crop: np.ndarray) -> np.ndarray:
        if crop.shape[0] == self.tile_px and crop.shape[1] == self.tile_px:
            return np.ascontiguousarray(crop)
        return cv2.resize(crop, (self.tile_px, self.tile_px), interpolation=RESIZE_FILTER)

    def read_job(self, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
        """Tiles at level origins (lx, ly). Where DCT scaling is valid for a tile (see
        jpeg_scaled.py) it is decoded at 1/scale; every other tile is read in full."""
        if self.scaled is None:
            return self._read_full(lx, ly)
        out = np.empty((len(lx), self.tile_px, self.tile_px, 3), np.uint8)
        todo = np.ones(len(lx), dtype=bool)
        cache: dict = {}
        fd = os.open(self.scaled.path, os.O_RDONLY)
        try:
            for i, (x, y) in enumerate(zip(lx, ly)):
                if self.scaled.covers(int(x), int(y), self.box_px):
                    try:
                        tile = self.scaled.read_box(fd, int(x), int(y), self.box_px, cache)
                    except DecodeError:
                        continue  # OpenSlide reads it: its pixels, or its one-line error naming the file
                    if not self.canny_band[0] <= edge_ratio(tile, self.settings) < self.canny_band[1]:
                        out[i] = tile
                        todo[i] = False
        finally:
            os.close(fd)
        if todo.any():
            out[todo] = self._read_full(lx[todo], ly[todo])
        return out

    def _read_full(self, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
        """Tiles at level origins (lx, ly): one strip read if they are a run along one row
        and the downsample is an integer (exact crops), else one read per tile."""
        out = np.empty((len(lx), self.tile_px, self.tile_px, 3), np.uint8)
        if self.integer_down and len(lx) > 1 and np.all(ly == ly[0]) and np.all(np.diff(lx) > 0):
            strip = self.read_strip(int(lx[0]), int(ly[0]), int(lx[-1] - lx[0]) + self.box_px)
            for i, x in enumerate(lx):
                offset = int(x - lx[0])
                out[i] = self.to_tile(strip[:, offset:offset + self.box_px])
        else:
            for i, (x, y) in enumerate(zip(lx, ly)):
                out[i] = self.to_tile(self.read_strip(int(x), int(y), self.box_px))
        return out


def _canny_band(settings: TilingSettings) -> tuple[float, float]:
    """Edge ratios too close to the Canny threshold to trust a DCT-scaled tile's decision.

    DCT scaling is not the area filter: it changed edge ratios by up to 14 % (relative) on
    the generated slides; the band allows DCT_CANNY_GUARD (30 %) either way.
    """
    t = settings.min_edge_ratio
    return t / (1 + DCT_CANNY_GUARD), t / (1 - DCT_CANNY_GUARD)


def _plan_jobs(reader: _Reader, lx: np.ndarray, ly: np.ndarray) -> list[np.ndarray]:
    """Split tiles (in grid order) into jobs: runs in one row, close together, one strip wide."""
    box = reader.box_px
    max_tiles = len(lx) if reader.integer_down else 8  # else read one by one; jobs amortise scheduling
    jobs, start = [], 0
    for i in range(1, len(lx) + 1):
        if (i == len(lx) or i - start >= max_tiles or ly[i] != ly[start]
                or not 0 < lx[i] - lx[i - 1] <= 2 * box or lx[i] - lx[start] + box > STRIP_MAX_PX):
            jobs.append(np.arange(start, i))
            start = i
    return jobs


def _scan(slide: Slide, grid: TileGrid, settings: TilingSettings, canny: bool
          ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield (grid positions, tile images, Canny keep flags or None) job by job, in grid order."""
    reader = _Reader.make(slide, grid.level, grid.level_box_px, grid.tile_px, settings)
    lx, ly = reader.level_origin(grid.x_px, grid.y_px)
    jobs = _plan_jobs(reader, lx, ly)
    if not jobs:
        return

    def work(positions: np.ndarray):
        images = reader.read_job(lx[positions], ly[positions])
        return positions, images, (keep_tiles(images, settings) if canny else None)

    job_bytes = 4 * reader.box_px * (STRIP_MAX_PX + reader.box_px) + 3 * grid.tile_px**2 * 32
    inflight = max(1, min(2 * settings.read_threads, INFLIGHT_BYTES // job_bytes))
    pending: collections.deque[Future] = collections.deque()
    executor = ThreadPoolExecutor(max_workers=settings.read_threads, thread_name_prefix="eagle-read")
    try:
        for positions in jobs:
            pending.append(executor.submit(work, positions))
            if len(pending) >= inflight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True)


def _batches(grid: TileGrid, parts: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int,
             index_offset_kept: bool) -> Iterator[TileBatch]:
    buf_pos: list[np.ndarray] = []
    buf_img: list[np.ndarray] = []
    count, emitted = 0, 0

    def flush(n: int) -> TileBatch:
        nonlocal buf_pos, buf_img, emitted
        pos, img = np.concatenate(buf_pos), np.concatenate(buf_img)
        buf_pos, buf_img = [pos[n:]], [img[n:]]
        pos, img = pos[:n], img[:n]
        index = np.arange(emitted, emitted + n, dtype=np.int64) if index_offset_kept else pos.astype(np.int64)
        emitted += n
        return TileBatch(images=img, index=index, x_px=grid.x_px[pos], y_px=grid.y_px[pos],
                         x_um=grid.x_um[pos], y_um=grid.y_um[pos])

    for positions, images in parts:
        buf_pos.append(positions)
        buf_img.append(images)
        count += len(positions)
        while count >= batch_size:
            yield flush(batch_size)
            count -= batch_size
    if count:
        yield flush(count)


def iter_tile_batches(slide: Slide, grid: TileGrid, batch_size: int = 64,
                      settings: TilingSettings | None = None) -> Iterator[TileBatch]:
    """Every tile of `grid`, in grid order, as batches; `index` = positions in `grid`."""
    s = settings or slide.settings
    parts = ((pos, img) for pos, img, _ in _scan(slide, grid, s, canny=False))
    yield from _batches(grid, parts, batch_size, index_offset_kept=False)


def iter_tissue_batches(slide: Slide, settings: TilingSettings | None = None, batch_size: int = 64,
                        use_mask: bool = True, candidates: TileGrid | None = None) -> Iterator[TileBatch]:
    """One pass: read the candidates, keep the tiles passing the Canny rule, yield them.

    `index` is the tile's position in `tissue_grid(slide)` (its row-major index among the
    slide's kept tiles), so a consumer never needs a second read to learn the grid.
    `candidates` (from `candidate_grid`) saves recomputing the mask when the caller has it.
    """
    s = settings or slide.settings
    grid = candidates if candidates is not None else candidate_grid(slide, s, use_mask)
    parts = ((pos[keep], img[keep]) for pos, img, keep in _scan(slide, grid, s, canny=True))
    yield from _batches(grid, parts, batch_size, index_offset_kept=True)


def tissue_grid(slide: Slide, settings: TilingSettings | None = None, use_mask: bool = True,
                candidates: TileGrid | None = None) -> TileGrid:
    """The EAGLE tiles of a slide: candidates that pass the Canny rule (reads them once)."""
    s = settings or slide.settings
    grid = candidates if candidates is not None else candidate_grid(slide, s, use_mask)
    keep = np.zeros(len(grid), dtype=bool)
    for positions, _, flags in _scan(slide, grid, s, canny=True):
        keep[positions] = flags
    return grid.subset(keep)


def read_tiles(slide: Slide, x_um, y_um, settings: TilingSettings | None = None) -> np.ndarray:
    """Tiles at top-left µm coordinates, (B, tile_px, tile_px, 3) uint8 RGB.

    Bit-identical to the grid reader's pixels for the same tile (same level, box and filter).
    """
    s = settings or slide.settings
    mpp = slide.require_mpp()
    x_px, y_px = _round(np.atleast_1d(x_um) / mpp), _round(np.atleast_1d(y_um) / mpp)
    if x_px.shape != y_px.shape:
        raise ValueError("x_um and y_um must have the same length")
    level = read_level(slide, s.target_mpp)
    box = max(1, int(_round(s.tile_um / slide.level_mpp(level))))
    reader = _Reader.make(slide, level, box, s.tile_px, s)
    lx, ly = reader.level_origin(x_px, y_px)
    out = np.empty((len(x_px), s.tile_px, s.tile_px, 3), np.uint8)
    for i in range(len(x_px)):
        out[i] = reader.read_job(lx[i:i + 1], ly[i:i + 1])[0]
    return out
