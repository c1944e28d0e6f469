"""Slide thumbnails (with the patient's selected tile boxes) and tile images, cached as PNG.

Everything is read from files the catalog points to (`slides.path`, `slides.artifact_path`)
or from uploads stored under DATA/uploads with generated names; request parameters only
select among them (ids, enumerated options, coordinates checked against the slide). Images
are cached in the viewer's one capped image cache (`service.viewer.cache`, EAGLE_INDEX_TILE_CACHE_MB:
DATA/cache/{thumbnails,tiles,uploads/<id>}, atomic writes, least recently used evicted), and
returned as PNG bytes. A slide's file is checked against the catalog before any cached image is
served (a replaced file is 409); an upload's images leave the cache with the upload (issue 24).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eagle_index.errors import NotFoundError

THUMB_SIZES = (160, 256, 320, 512, 768, 1024)
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class SelectedTile:
    """One of a patient's top-k tiles (the ones its EAGLE vector averages)."""

    rank: int
    slide: str
    slide_id: int | None
    x_um: float
    y_um: float
    attention: float

    def as_dict(self) -> dict:
        out = {"rank": self.rank, "slide": self.slide, "slide_id": self.slide_id, "x_um": self.x_um, "y_um": self.y_um,
               "attention": self.attention, "tile_url": None}
        if self.slide_id is not None:
            out["tile_url"] = tile_url(self.slide_id, self.x_um, self.y_um)
        return out


def tile_url(slide_id: int, x_um: float, y_um: float) -> str:
    return f"/api/v1/slides/{slide_id}/tile.png?x_um={x_um:.3f}&y_um={y_um:.3f}"


def _fp(row) -> str:
    """A short, file-name-safe digest of the slide's content fingerprint (cache keys change with the file)."""
    return hashlib.sha256(str(row.fingerprint).encode()).hexdigest()[:16]


def _cache(service):
    """The one capped image cache (EAGLE_INDEX_TILE_CACHE_MB), shared with the viewer's Deep Zoom tiles."""
    return service.viewer.cache


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _cached_png(service, relative: str, render) -> bytes:
    """The cached PNG at `relative`, else `render()`'s image, encoded and cached (a full cache: served uncached)."""
    cache = _cache(service)
    data = cache.get(relative)
    if data is None:
        data = _png_bytes(render())
        cache.put(relative, data)
    return data


def _slide_file_error(row, exc: Exception):
    """A slide file that cannot be opened or read: 409 naming the slide, never the server's path (issue 24 item 11)."""
    from eagle_index.viewer import SlideUnavailableError, one_line

    return SlideUnavailableError(f"slide {row.name!r}: its file cannot be opened: {one_line(exc, row.path)}")


def patient_tiles(service, patient_id: int, slides) -> list[SelectedTile]:
    """The patient's selected tiles (same selection and tie rule as its vector), best first."""
    from eagle_index.search import patient_tiles as select_tiles

    paths = service.browse.artifact_paths(patient_id)
    tiles = select_tiles(paths, service.settings.eagle.top_k) if paths else None
    if tiles is None:
        return []
    by_name: dict[str, int] = {}
    for row in slides:
        if row.status == "done":
            by_name.setdefault(row.name, row.id)
    return [SelectedTile(i + 1, name, by_name.get(name), float(x), float(y), float(a))
            for i, (name, x, y, a) in enumerate(zip(tiles.slide, tiles.x_um, tiles.y_um, tiles.attention))]


def _open(path: str | Path, mpp: float | None, settings):
    from eagle_index.slides import open_slide

    return open_slide(path, mpp_override=mpp, settings=settings.tiling, require_mpp=False)


def _grid(x_um, y_um, mpp: float, tile_um: float):
    from eagle_index.slides.tiling import TileGrid

    x_um, y_um = np.asarray(x_um, np.float64), np.asarray(y_um, np.float64)
    zeros = np.zeros(len(x_um), np.int64)
    return TileGrid(x_px=np.round(x_um / mpp).astype(np.int64), y_px=np.round(y_um / mpp).astype(np.int64), x_um=x_um, y_um=y_um,
                    col=zeros, row=zeros, tile_um=tile_um, tile_px=0, level=0, level_box_px=0, mpp=mpp, mpp_source="catalog",
                    n_cols=0, n_rows=0)


def slide_thumbnail(service, row, size: int, tiles: list[SelectedTile] | None) -> bytes:
    """PNG of a catalogued slide, long side `size`, with boxes around `tiles` (None: no boxes).

    The file is checked against the catalog first (service.viewer.verify: gone is 404, replaced
    since it was embedded is 409), also when the cache holds the image (issue 24 item 8)."""
    from eagle_index.errors import EagleIndexError
    from eagle_index.slides import make_thumbnail

    service.viewer.verify(row.id)
    boxes = [t for t in tiles or () if t.slide_id == row.id]
    key = hashlib.sha256(repr([(round(t.x_um, 1), round(t.y_um, 1)) for t in boxes]).encode()).hexdigest()[:12]
    relative = f"thumbnails/{row.id}-{_fp(row)}-{size}-{'b' + key if tiles is not None else 'plain'}.png"

    def render():
        try:
            with _open(row.path, row.mpp, service.settings) as slide:
                grid = None
                if boxes and slide.mpp:
                    grid = _grid([t.x_um for t in boxes], [t.y_um for t in boxes], slide.mpp, service.settings.tiling.tile_um)
                return make_thumbnail(slide, grid, max_size=size, show_mask=tiles is not None)
        except EagleIndexError as exc:
            raise _slide_file_error(row, exc) from None

    return _cached_png(service, relative, render)


def _artifact_coords(path: str) -> np.ndarray:
    return artifact_tiles(path)[0]


def artifact_tiles(path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(coords (N, 2) µm, raw attention (N,), tile side µm) of every tissue tile, without the features."""
    from eagle_index.formats.h5util import open_h5

    with open_h5(Path(path)) as handle:
        return (np.asarray(handle["coords"][()], dtype=np.float64), np.asarray(handle["attention"][()], dtype=np.float64),
                float(handle.attrs["tile_size_um"]))


def slide_tile(service, row, x_um: float, y_um: float) -> bytes:
    """PNG of one tile of a catalogued slide, as the models saw it (224 px at 2 µm/px).

    Only tiles the pipeline read may be asked for: (x_um, y_um) must be one of the slide's
    tile coordinates in its artifact (within 1 µm), else NotFoundError. The file is checked
    against the catalog first, as for thumbnails.
    """
    from PIL import Image

    from eagle_index.errors import EagleIndexError
    from eagle_index.slides import read_tiles

    if not row.artifact_path or not Path(row.artifact_path).is_file():
        raise NotFoundError(f"slide {row.name!r} has no tiles (not embedded by this catalog)")
    service.viewer.verify(row.id)
    coords = _artifact_coords(row.artifact_path)
    distance = np.abs(coords[:, 0] - x_um) + np.abs(coords[:, 1] - y_um)
    index = int(np.argmin(distance)) if len(coords) else -1
    if index < 0 or distance[index] > 1.0:
        raise NotFoundError(f"slide {row.name!r} has no tile at ({x_um:.1f}, {y_um:.1f}) µm")

    def render():
        try:
            with _open(row.path, row.mpp, service.settings) as slide:
                pixels = read_tiles(slide, [coords[index, 0]], [coords[index, 1]], service.settings.tiling)[0]
        except EagleIndexError as exc:
            raise _slide_file_error(row, exc) from None
        return Image.fromarray(pixels)

    return _cached_png(service, f"tiles/{row.id}-{_fp(row)}-t{index}.png", render)


# -- uploads ------------------------------------------------------------------------------------
# An upload's images live in the one image cache under uploads/<id>/ and leave it with the upload:
# a request for an upload that is gone drops them, and caching an image of any upload drops those of
# every upload deleted meanwhile (the server keeps only the latest few uploads).
def upload_path(service, upload_id: str) -> Path:
    """The stored upload with this generated id (NotFoundError for anything else, its cached images dropped)."""
    if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
        raise NotFoundError("unknown upload id: an upload id is the 32 hexadecimal characters the upload was answered with")
    folder = service.settings.data_dir / "uploads"
    found = sorted(p for p in folder.glob(f"{upload_id}.*") if p.is_file()) if folder.is_dir() else []
    if not found:
        _cache(service).discard(f"uploads/{upload_id}")
        raise NotFoundError("unknown upload id: no such upload on this server (uploads are kept for a while, then deleted)")
    return found[0]


def _forget_gone_uploads(service) -> None:
    cached = _cache(service).root / "uploads"
    if not cached.is_dir():
        return
    present = {p.name.split(".", 1)[0] for p in (service.settings.data_dir / "uploads").glob("*.*")}
    for entry in cached.iterdir():
        if entry.name not in present:
            _cache(service).discard(f"uploads/{entry.name}")


def _upload_png(service, upload_id: str, name: str, render) -> bytes:
    relative = f"uploads/{upload_id}/{name}"
    data = _cache(service).get(relative)
    if data is None:
        data = _png_bytes(render())
        _forget_gone_uploads(service)
        _cache(service).put(relative, data)
    return data


def _upload_error(exc, path: Path):
    """The same error, naming "the uploaded slide" instead of the server's path."""
    from eagle_index.viewer import one_line

    text = one_line(exc, str(path)).replace(path.name, "the uploaded slide")
    try:
        return type(exc)(text)
    except TypeError:
        return exc


def upload_thumbnail(service, upload_id: str, size: int) -> bytes:
    from eagle_index.errors import EagleIndexError
    from eagle_index.slides import make_thumbnail

    path = upload_path(service, upload_id)

    def render():
        try:
            with _open(path, None, service.settings) as slide:
                return make_thumbnail(slide, None, max_size=size, show_mask=slide.mpp is not None)
        except EagleIndexError as exc:
            raise _upload_error(exc, path) from None

    return _upload_png(service, upload_id, f"thumbnail-{size}.png", render)


def upload_tile(service, upload_id: str, x_um: float, y_um: float) -> bytes:
    """A tile of an uploaded slide; the coordinates must lie on the slide (whole tile inside)."""
    from PIL import Image

    from eagle_index.errors import EagleIndexError
    from eagle_index.slides import read_tiles

    path = upload_path(service, upload_id)

    def render():
        try:
            with _open(path, None, service.settings) as slide:
                if slide.mpp is None:
                    raise NotFoundError("this upload has no trustworthy µm/px, so it has no tiles")
                width_um, height_um = slide.dimensions[0] * slide.mpp, slide.dimensions[1] * slide.mpp
                tile_um = service.settings.tiling.tile_um
                if not (0 <= x_um <= width_um - tile_um + 1 and 0 <= y_um <= height_um - tile_um + 1):
                    raise NotFoundError(f"no tile at ({x_um:.1f}, {y_um:.1f}) µm on this upload")
                pixels = read_tiles(slide, [x_um], [y_um], service.settings.tiling)[0]
        except NotFoundError:
            raise
        except EagleIndexError as exc:
            raise _upload_error(exc, path) from None
        return Image.fromarray(pixels)

    return _upload_png(service, upload_id, f"tile-{int(round(x_um))}-{int(round(y_um))}.png", render)
