"""Open a slide file (any OpenSlide format, or a plain PNG/JPEG) and read RGB pixels.

Every failure - unsupported file, corrupt header, a tile that fails to decode mid-read -
becomes one `SlideError` whose message names the file and the cause, so a batch job can log
it and move on. Reads return RGB uint8 arrays composited on white: transparent areas
(outside the scanned region, missing MRXS tiles) are glass, not black.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from eagle_index.config import TilingSettings
from eagle_index.errors import SlideError
from eagle_index.slides.mpp import MppResult, resolve_mpp


def _one_line(exc: BaseException, path=None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if path is not None:  # the message starts with the path already: say it once
        text = text.replace(f"'{path}'", "the file").replace(str(path), "the file")
    return text if len(text) < 300 else text[:297] + "..."


def rgba_to_rgb_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite un-premultiplied RGBA on white, exactly and deterministically (integer math)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class Slide:
    """An open slide with a trusted MPP (or the reason it has none). Use as a context manager.

    `mpp` is µm per level-0 pixel; `mpp_source` names the metadata it came from (see mpp.py).
    `format` is OpenSlide's vendor ("aperio", "generic-tiff", "dicom", ...) or "image:png" etc.
    Opened with `require_mpp=False`, a slide without a trustworthy MPP has `mpp=None`,
    `mpp_source="none"` and `mpp_problem` set; it can still be read (thumbnails) but not tiled.
    """

    def __init__(self, path: Path, handle, fmt: str, mpp: MppResult | None, mpp_problem: str | None,
                 settings: TilingSettings):
        self.path = path
        self.format = fmt
        self.settings = settings
        self._handle = handle
        self._lock = threading.Lock()  # ImageSlide (PIL) is not safe for concurrent crops
        self._is_image = fmt.startswith("image")
        self.mpp: float | None = mpp.mpp if mpp else None
        self.mpp_source: str = mpp.source if mpp else "none"
        self.mpp_problem = mpp_problem
        self.dimensions: tuple[int, int] = tuple(handle.dimensions)
        self.level_count: int = handle.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in handle.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in handle.level_downsamples)
        self.properties: Mapping[str, str] = dict(handle.properties)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, format={self.format!r}, mpp={self.mpp}, mpp_source={self.mpp_source!r})"

    # -- geometry ---------------------------------------------------------------------------
    def require_mpp(self) -> float:
        """The MPP, or the SlideError explaining why there is none."""
        if self.mpp is None:
            raise SlideError(self.mpp_problem or f"{self.path}: no MPP")
        return self.mpp

    def level_mpp(self, level: int) -> float:
        return self.require_mpp() * self.level_downsamples[level]

    # -- pixels -----------------------------------------------------------------------------
    def read_rgb(self, location_px: tuple[int, int], level: int, size_px: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of a region; `location_px` is level-0, `size_px` is at `level`."""
        if self._handle is None:
            raise SlideError(f"{self.path}: slide is closed")
        x, y = int(location_px[0]), int(location_px[1])
        w, h = int(size_px[0]), int(size_px[1])
        try:
            if self._is_image:
                with self._lock:
                    region = self._handle.read_region((x, y), level, (w, h))
            else:
                region = self._handle.read_region((x, y), level, (w, h))
            rgba = np.asarray(region.convert("RGBA") if region.mode != "RGBA" else region)
        except Exception as exc:  # openslide/PIL raise several types; all mean "cannot read"
            raise SlideError(f"{self.path}: read failed at level {level}, ({x}, {y}) size {w}x{h}: "
                             f"{_one_line(exc)}") from exc
        return rgba_to_rgb_on_white(rgba)


def _probe(path: Path, handle) -> None:
    """Decode one small corner of the coarsest level, so a file whose pixels cannot be
    decoded at all fails at open (cheaply) rather than deep inside a tiling job."""
    level = handle.level_count - 1
    w, h = handle.level_dimensions[level]
    try:
        handle.read_region((0, 0), level, (min(w, 64), min(h, 64)))
    except Exception as exc:
        handle.close()
        raise SlideError(f"{path}: opens but cannot be read: {_one_line(exc, path)}") from exc


def open_slide(path: str | Path, mpp_override: float | None = None,
               settings: TilingSettings | None = None, *, require_mpp: bool = True) -> Slide:
    """Open any OpenSlide format or a plain image as a single-level slide, and resolve its MPP.

    Raises SlideError (naming the file) when it cannot be opened, or - with `require_mpp` -
    when its MPP is missing or implausible (the message says how to override it).
    """
    import openslide  # deferred: keeps `eagle-index --help` light

    settings = settings or TilingSettings()
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: no such file")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
        if vendor is not None:
            handle = openslide.OpenSlide(str(path))
            fmt = vendor
        else:
            from PIL import Image

            with Image.open(path) as image:
                fmt = f"image:{(image.format or 'unknown').lower()}"
                image.load()  # decode now: errors surface here, not in a worker thread
                handle = openslide.ImageSlide(image.copy())
    except Exception as exc:  # OpenSlideError, UnidentifiedImageError, OSError, ...
        raise SlideError(f"{path}: cannot open slide: {_one_line(exc, path)}") from exc
    _probe(path, handle)
    mpp, problem = None, None
    try:
        mpp = resolve_mpp(str(path), handle.properties, mpp_override, settings.default_mpp)
    except SlideError as exc:
        if require_mpp:
            handle.close()
            raise
        problem = str(exc)
    return Slide(path, handle, fmt, mpp, problem, settings)
