"""Which tiles are tissue: a cheap low-resolution mask, then EAGLE's exact Canny rule.

The Canny rule (normative, pipeline.md): grayscale the 224 px tile exactly as PIL's
``convert("L")`` does, ``cv2.Canny(gray, 40, 100)`` (3×3 Sobel, L1 gradient: OpenCV's
defaults), keep the tile when ``(edges > 0).mean() >= 0.02``.

The mask only exists to skip reading glass. It must never drop a tile the Canny rule would
keep on tissue, so it is deliberately generous: a mask pixel (about 8 µm) is "maybe tissue"
when it is not bright, or coloured, or differs from a neighbour - the last catches fat,
whose thin membranes over white fire Canny but barely darken a low-resolution mean (the
reason a plain brightness cut-off, as in STAMP, can drop fat). The result is then dilated by
one mask pixel, and a tile is a candidate when any mask pixel under it (plus that margin) is
set. False positives only cost a read; the Canny rule decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from eagle_index.config import TilingSettings
from eagle_index.slides.reader import Slide

MASK_UM = 8.0  # aimed µm per mask pixel (coarser pixels average thin tissue away)
GLASS_MIN_GRAY = 225  # a mask pixel darker than this is not glass
GLASS_MAX_SATURATION = 20  # max(R,G,B) - min(R,G,B) above this is stained, not glass
GLASS_MAX_LOCAL_RANGE = 10  # gray max - min in a 3×3 neighbourhood above this is structure
_STRIP_BYTES = 64 << 20  # bound on one overview strip read


def gray_l(rgb: np.ndarray) -> np.ndarray:
    """Grayscale (..., 3) uint8 RGB exactly like PIL ``Image.convert("L")`` (ITU-R 601-2 luma)."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def edge_ratio(tile_rgb: np.ndarray, settings: TilingSettings | None = None) -> float:
    """Fraction of Canny edge pixels of one RGB tile (EAGLE's tissue criterion)."""
    s = settings or TilingSettings()
    edges = cv2.Canny(gray_l(tile_rgb), s.canny_low, s.canny_high)
    return float(np.count_nonzero(edges)) / edges.size


def keep_tiles(images: np.ndarray, settings: TilingSettings | None = None) -> np.ndarray:
    """Boolean (B,) - which of a (B, H, W, 3) batch pass the Canny rule."""
    s = settings or TilingSettings()
    return np.array([edge_ratio(img, s) >= s.min_edge_ratio for img in images], dtype=bool)


def read_overview(slide: Slide, level: int, factor: int) -> np.ndarray:
    """RGB of a whole level, block-averaged by an integer `factor`, read in bounded strips.

    Integer block means make strips seamless; the last partial block replicates the edge
    rather than averaging in white, so tissue at the slide border is not diluted.
    """
    width, height = slide.level_dimensions[level]
    down = slide.level_downsamples[level]
    rows = max(factor, (_STRIP_BYTES // max(1, width * 4)) // factor * factor)
    out_w = math.ceil(width / factor)
    strips = []
    for y in range(0, height, rows):
        h = min(rows, height - y)
        strip = slide.read_rgb((0, int(round(y * down))), level, (width, h))
        if factor > 1:
            pad_y, pad_x = (-h) % factor, (-width) % factor
            if pad_y or pad_x:
                strip = np.pad(strip, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
            strip = strip.reshape(strip.shape[0] // factor, factor, out_w, factor, 3)
            strip = (strip.mean(axis=(1, 3)) + 0.5).astype(np.uint8)
        strips.append(strip)
    return np.concatenate(strips, axis=0)


def classify_tissue(rgb: np.ndarray) -> np.ndarray:
    """Boolean "maybe tissue" per pixel of a low-resolution RGB image, dilated by one pixel."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)  # no uint32 temporaries
    saturation = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    kernel = np.ones((3, 3), np.uint8)
    local_range = cv2.dilate(gray, kernel).astype(np.int16) - cv2.erode(gray, kernel)
    tissue = (gray < GLASS_MIN_GRAY) | (saturation > GLASS_MAX_SATURATION) | (local_range > GLASS_MAX_LOCAL_RANGE)
    return cv2.dilate(tissue.astype(np.uint8), kernel).astype(bool)


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask; pixel (i, j) covers µm [j*px_um, (j+1)*px_um) × [i*px_um, ...)."""

    mask: np.ndarray
    px_um: float
    level: int

    def any_in_boxes(self, x_um: np.ndarray, y_um: np.ndarray, size_um: float) -> np.ndarray:
        """For each square box (top-left µm, side `size_um`): does it touch any mask pixel?"""
        h, w = self.mask.shape
        dtype = np.int32 if h * w < 2**31 else np.int64
        integral = np.zeros((h + 1, w + 1), dtype)
        integral[1:, 1:] = self.mask.astype(dtype).cumsum(0, dtype=dtype).cumsum(1, dtype=dtype)
        x0 = np.clip(np.floor(np.asarray(x_um) / self.px_um).astype(np.int64), 0, w)
        y0 = np.clip(np.floor(np.asarray(y_um) / self.px_um).astype(np.int64), 0, h)
        x1 = np.clip(np.ceil((np.asarray(x_um) + size_um) / self.px_um).astype(np.int64), 0, w)
        y1 = np.clip(np.ceil((np.asarray(y_um) + size_um) / self.px_um).astype(np.int64), 0, h)
        total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        return total > 0


def mask_level(slide: Slide) -> tuple[int, int]:
    """(level, integer block factor) giving mask pixels of about MASK_UM, never coarser."""
    mpp = slide.require_mpp()
    fine_enough = [i for i, d in enumerate(slide.level_downsamples) if mpp * d <= MASK_UM * (1 + 1e-6)]
    level = max(fine_enough, key=lambda i: slide.level_downsamples[i]) if fine_enough else 0
    factor = max(1, int(MASK_UM / slide.level_mpp(level) + 1e-6))
    return level, factor


def tissue_mask(slide: Slide) -> TissueMask:
    """The generous "maybe tissue" mask of the whole slide at about 8 µm/px."""
    level, factor = mask_level(slide)
    overview = read_overview(slide, level, factor)
    return TissueMask(classify_tissue(overview), slide.level_mpp(level) * factor, level)
