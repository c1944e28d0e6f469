"""Small pyramidal slides with known tissue, written in real formats: for tests of anything
that reads slides (tiling, the embedding pipeline, ingest), the benchmarks and `make demo`.

    from eagle_index.slides.synthetic import write_pyramidal_tiff, tiles_inside

    slide = write_pyramidal_tiff(tmp_path / "s.tiff", mpp=0.5, size_um=(2240, 1792),
                                 tissue_boxes_um=[(448, 448, 896, 896)])
    expected = tiles_inside(slide.tissue_boxes_um, slide.size_um)  # {(x_um, y_um), ...}

What is written: a JPEG-tiled (256 px, YCbCr 4:2:0) TIFF, one page per pyramid level
(downsample 2, 4, ... until the long side is ≤ 256 px; ``level_step=4``: 4, 16, ... like
Aperio). By default OpenSlide sees a "generic-tiff" with MPP in the TIFF resolution tags
(pixels per centimetre); when `objective` is given or ``vendor="aperio"``, an Aperio SVS
(ImageDescription ``|AppMag = 20|MPP = 0.5``, no resolution tags).
`write_mpp=False` writes no scale at all (the reader must then be given one).

Content: glass is near-white (242) with mild noise, on which EAGLE's Canny rule (40/100,
≥ 2 % edges) never fires; each tissue box is textured so that it always fires:
``texture="cells"`` (pink stroma with dark 8-10 µm nuclei on a 16 µm lattice) or
``"fat"`` (white cells with 3 µm pink membranes every 32 µm - the hard case for masks).
The texture is a function of µm, so slides at different MPPs show the same tissue, and it
repeats every 64 µm, so repeated file tiles are rendered and JPEG-encoded once: a
0.25 µm/px, 2 × 2 mm slide writes in about a second, 40,000 × 30,000 px in about 15 s.
Align boxes to multiples of 448 µm to make the expected tile set exact (`tiles_inside`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x_um, y_um, w_um, h_um

FILE_TILE_PX = 256
PERIOD_UM = 64.0
GLASS_RGB = (242, 242, 242)
STROMA_RGB = (232, 176, 206)
NUCLEUS_RGB = (92, 58, 138)
FAT_RGB = (247, 243, 245)
MEMBRANE_RGB = (214, 140, 182)

__all__ = ["FixtureSlide", "tiles_inside", "write_image_slide", "write_pyramidal_tiff"]


@dataclass(frozen=True)
class FixtureSlide:
    """What was written: path, true level-0 µm/px, size in px, tissue boxes in µm."""

    path: Path
    mpp: float
    size_px: tuple[int, int]
    tissue_boxes_um: tuple[Box, ...]
    levels: int

    @property
    def size_um(self) -> tuple[float, float]:
        return (self.size_px[0] * self.mpp, self.size_px[1] * self.mpp)


def tiles_inside(boxes_um: Iterable[Box], size_um: tuple[float, float], tile_um: float = 448.0
                 ) -> set[tuple[float, float]]:
    """Top-left µm of every complete grid tile that lies fully inside one tissue box."""
    n_cols, n_rows = int(size_um[0] // tile_um + 1e-9), int(size_um[1] // tile_um + 1e-9)
    out = set()
    for row in range(n_rows):
        for col in range(n_cols):
            x, y = col * tile_um, row * tile_um
            if any(bx - 1e-6 <= x and x + tile_um <= bx + bw + 1e-6 and by - 1e-6 <= y and y + tile_um <= by + bh + 1e-6
                   for bx, by, bw, bh in boxes_um):
                out.add((x, y))
    return out


# -- texture ------------------------------------------------------------------------------
_rng = np.random.default_rng(1234)
_JITTER = _rng.uniform(5.0, 11.0, size=(2, 4, 4))  # nucleus centre inside each 16 µm cell
_RADIUS = _rng.uniform(4.0, 5.0, size=(4, 4))


def _texture(x_um: np.ndarray, y_um: np.ndarray, texture: str, palette: dict | None = None) -> np.ndarray:
    """RGB float (len(y), len(x), 3) of tissue at pixel-centre coordinates (µm).

    `palette` overrides the colours (keys stroma, nucleus, fat, membrane), e.g. to mimic the
    stain differences between patients or sites in a demo archive.
    """
    colours = {"stroma": STROMA_RGB, "nucleus": NUCLEUS_RGB, "fat": FAT_RGB, "membrane": MEMBRANE_RGB, **(palette or {})}
    if texture == "fat":
        on_x = np.abs(((x_um + 16.0) % 32.0) - 16.0) < 1.5
        on_y = np.abs(((y_um + 16.0) % 32.0) - 16.0) < 1.5
        membrane = on_y[:, None] | on_x[None, :]
        return np.where(membrane[..., None], np.array(colours["membrane"], float), np.array(colours["fat"], float))
    if texture != "cells":
        raise ValueError(f"unknown texture {texture!r}")
    cx, cy = (np.floor(x_um / 16.0).astype(int) % 4), (np.floor(y_um / 16.0).astype(int) % 4)
    lx, ly = x_um % 16.0, y_um % 16.0
    dx = lx[None, :] - _JITTER[0][cy[:, None], cx[None, :]]
    dy = ly[:, None] - _JITTER[1][cy[:, None], cx[None, :]]
    nucleus = dx * dx + dy * dy < _RADIUS[cy[:, None], cx[None, :]] ** 2
    return np.where(nucleus[..., None], np.array(colours["nucleus"], float), np.array(colours["stroma"], float))


class _Renderer:
    """Renders file tiles of one level; caches tiles that repeat (pure tissue, pure glass)."""

    def __init__(self, px_um: float, boxes: Sequence[Box], texture: str, seed: int, palette: dict | None = None,
                 overlays: Sequence[tuple[Box, str, dict | None]] = ()):
        self.palette = palette
        self.overlays = tuple(overlays)
        self.px_um = px_um
        self.boxes = boxes
        self.texture = texture
        self.ss = int(min(4, max(1, math.ceil(px_um / 1.0))))  # supersample coarse levels
        self.noise = np.random.default_rng(seed).normal(0, 1.5, (FILE_TILE_PX, FILE_TILE_PX, 1))
        self.cache: dict = {}

    def _coords(self, start_px: int) -> np.ndarray:
        n, ss = FILE_TILE_PX * self.ss, self.ss
        return (start_px + (np.arange(n) + 0.5) / ss) * self.px_um

    def _tissue(self, x0: int, y0: int) -> np.ndarray:
        key = ("t", round((x0 * self.px_um) % PERIOD_UM, 6), round((y0 * self.px_um) % PERIOD_UM, 6))
        if key not in self.cache:
            rgb = _texture(self._coords(x0), self._coords(y0), self.texture, self.palette)
            if self.ss > 1:
                n = FILE_TILE_PX
                rgb = rgb.reshape(n, self.ss, n, self.ss, 3).mean(axis=(1, 3))
            self.cache[key] = rgb
        return self.cache[key]

    def _inside(self, x0: int, y0: int) -> np.ndarray:
        xs, ys = (x0 + np.arange(FILE_TILE_PX) + 0.5) * self.px_um, (y0 + np.arange(FILE_TILE_PX) + 0.5) * self.px_um
        inside = np.zeros((FILE_TILE_PX, FILE_TILE_PX), bool)
        for bx, by, bw, bh in self.boxes:
            inside |= ((ys >= by) & (ys < by + bh))[:, None] & ((xs >= bx) & (xs < bx + bw))[None, :]
        return inside

    def tile(self, x0: int, y0: int) -> tuple[np.ndarray, object]:
        """(RGB uint8 file tile at level pixel (x0, y0), key if it is a reused tile else None)."""
        pixels, key = self._base_tile(x0, y0)
        span = FILE_TILE_PX * self.px_um
        ux, uy = x0 * self.px_um, y0 * self.px_um
        hits = [o for o in self.overlays if not (ux >= o[0][0] + o[0][2] or ux + span <= o[0][0] or uy >= o[0][1] + o[0][3] or uy + span <= o[0][1])]
        if not hits:
            return pixels, key
        out = pixels.astype(float)
        xs, ys = self._coords(x0), self._coords(y0)
        for (bx, by, bw, bh), texture, palette in hits:
            rgb = _texture(xs, ys, texture, palette)
            if self.ss > 1:
                n = FILE_TILE_PX
                rgb = rgb.reshape(n, self.ss, n, self.ss, 3).mean(axis=(1, 3))
            cx, cy = (x0 + np.arange(FILE_TILE_PX) + 0.5) * self.px_um, (y0 + np.arange(FILE_TILE_PX) + 0.5) * self.px_um
            inside = ((cy >= by) & (cy < by + bh))[:, None] & ((cx >= bx) & (cx < bx + bw))[None, :]
            out = np.where(inside[..., None], rgb, out)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), None

    def _base_tile(self, x0: int, y0: int) -> tuple[np.ndarray, object]:
        span = FILE_TILE_PX * self.px_um
        ux, uy = x0 * self.px_um, y0 * self.px_um
        full = any(bx <= ux and ux + span <= bx + bw and by <= uy and uy + span <= by + bh
                   for bx, by, bw, bh in self.boxes)
        empty = all(ux >= bx + bw or ux + span <= bx or uy >= by + bh or uy + span <= by
                    for bx, by, bw, bh in self.boxes)
        if empty:
            if "glass" not in self.cache:
                self.cache["glass"] = np.clip(np.array(GLASS_RGB, float) + self.noise, 0, 255).astype(np.uint8)
            return self.cache["glass"], "glass"
        if full:
            key = ("full", round(ux % PERIOD_UM, 6), round(uy % PERIOD_UM, 6))
            if key not in self.cache:
                self.cache[key] = np.clip(self._tissue(x0, y0) + 0.5, 0, 255).astype(np.uint8)
            return self.cache[key], key
        glass = np.array(GLASS_RGB, float) + self.noise
        tissue = np.where(self._inside(x0, y0)[..., None], self._tissue(x0, y0), glass)
        return np.clip(tissue + 0.5, 0, 255).astype(np.uint8), None

    def encoded_tiles(self, width: int, height: int, quality: int):
        """JPEG bytes of every file tile, row-major, as the TIFF stores them (YCbCr 4:2:0).

        Repeated tiles are encoded once: that is what makes large test slides quick to write.
        """
        import imagecodecs

        encoded: dict = {}
        for y0 in range(0, height, FILE_TILE_PX):
            for x0 in range(0, width, FILE_TILE_PX):
                pixels, key = self.tile(x0, y0)
                if key is None or key not in encoded:
                    data = imagecodecs.jpeg_encode(pixels, level=quality, subsampling=(2, 2), colorspace="RGB",
                                                   outcolorspace="YCBCR")
                    if key is None:
                        yield data
                        continue
                    encoded[key] = data
                yield encoded[key]


def _default_boxes(size_um: tuple[float, float], tile_um: float = 448.0) -> list[Box]:
    n_cols, n_rows = int(size_um[0] // tile_um), int(size_um[1] // tile_um)
    if n_cols < 3 or n_rows < 3:
        return [(0.0, 0.0, size_um[0], size_um[1])]
    return [(tile_um, tile_um, (n_cols - 2) * tile_um, (n_rows - 2) * tile_um)]


def write_pyramidal_tiff(path: str | Path, mpp: float = 0.5, size: tuple[int, int] | None = None,
                         tissue_boxes_um: Sequence[Box] | None = None, objective: float | None = None,
                         write_mpp: bool = True, *, size_um: tuple[float, float] | None = None,
                         vendor: str | None = None, texture: str = "cells", quality: int = 90,
                         seed: int = 0, min_level_px: int = 256, level_step: int = 2,
                         palette: dict | None = None, overlays: Sequence[tuple[Box, str, dict | None]] = ()) -> FixtureSlide:
    """Write a JPEG-tiled pyramidal TIFF/SVS of `size` level-0 px (or `size_um`) and return its facts.

    Defaults: 2048 × 1536 px; one tissue box covering the interior whole 448 µm tiles (one
    tile margin of glass), or the whole slide when it is under 3 tiles wide. `level_step=4`
    gives an Aperio-like pyramid (downsamples 1, 4, 16, ...). `overlays`: (box µm, texture,
    palette) regions painted over the slide with another texture/palette (e.g. a rare pattern
    planted in a small region, for region-search tests).
    """
    import tifffile

    if size is not None and size_um is not None:
        raise ValueError("give size (px) or size_um, not both")
    if size_um is not None:
        size = (int(round(size_um[0] / mpp)), int(round(size_um[1] / mpp)))
    width, height = size or (2048, 1536)
    boxes = tuple(tuple(map(float, b)) for b in (
        tissue_boxes_um if tissue_boxes_um is not None else _default_boxes((width * mpp, height * mpp))))
    vendor = vendor or ("aperio" if objective is not None else "generic")
    if vendor not in ("generic", "aperio"):
        raise ValueError(f"vendor must be 'generic' or 'aperio', not {vendor!r}")

    level_sizes = [(width, height)]
    while max(level_sizes[-1]) > min_level_px:
        w, h = level_sizes[-1]
        level_sizes.append((max(1, -(-w // level_step)), max(1, -(-h // level_step))))

    description = None
    if vendor == "aperio":
        fields = [f"AppMag = {objective:g}"] if objective is not None else []
        fields += [f"MPP = {mpp:.6g}"] if write_mpp else []
        description = (f"Aperio Image Library v12.0.0\n{width}x{height} [0,0 {width}x{height}] "
                       f"({FILE_TILE_PX}x{FILE_TILE_PX}) JPEG/RGB Q={quality}" + "".join(f"|{f}" for f in fields))

    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tif:
        for k, (w, h) in enumerate(level_sizes):
            px_um = mpp * (level_step ** k)
            renderer = _Renderer(px_um, boxes, texture, seed + k, palette, overlays)
            extra = {}
            if write_mpp and vendor == "generic":
                extra = {"resolution": (1e4 / px_um, 1e4 / px_um), "resolutionunit": "CENTIMETER"}
            tif.write(renderer.encoded_tiles(w, h, quality), shape=(h, w, 3), dtype=np.uint8,
                      tile=(FILE_TILE_PX, FILE_TILE_PX), compression="jpeg", subsampling=(2, 2),
                      photometric="rgb", description=description if k == 0 else None,
                      subfiletype=1 if k else 0, metadata=None, **extra)
    return FixtureSlide(path, float(mpp), (width, height), boxes, len(level_sizes))


def write_image_slide(path: str | Path, size: tuple[int, int] = (1024, 768), px_um: float = 2.0,
                      tissue_boxes_um: Sequence[Box] | None = None, texture: str = "cells") -> Path:
    """A plain PNG/JPEG (by suffix) of the same content, with no scale recorded (needs --mpp)."""
    from PIL import Image

    width, height = size
    boxes = tissue_boxes_um if tissue_boxes_um is not None else _default_boxes((width * px_um, height * px_um))
    renderer = _Renderer(px_um, boxes, texture, seed=0)
    rows, cols = -(-height // FILE_TILE_PX), -(-width // FILE_TILE_PX)
    canvas = np.zeros((rows * FILE_TILE_PX, cols * FILE_TILE_PX, 3), np.uint8)
    for y0 in range(0, height, FILE_TILE_PX):
        for x0 in range(0, width, FILE_TILE_PX):
            canvas[y0:y0 + FILE_TILE_PX, x0:x0 + FILE_TILE_PX] = renderer.tile(x0, y0)[0]
    Image.fromarray(canvas[:height, :width]).save(path)
    return Path(path)
