"""Images of slides and uploads, and the tile positions pages draw: `service.media` (issue 22 item 6).

Slide thumbnails (with the patient's selected tile boxes), tile images, upload previews, a
patient's selected tiles and a slide's tissue tiles and candidates. Everything is read from files
the catalog points to (`slides.path`, `slides.artifact_path`) or from uploads stored under
DATA/uploads with generated names; callers only select among them (ids, enumerated sizes,
coordinates checked against the slide). Images are cached in the viewer's one capped image cache
(`ViewerService.cache`, EAGLE_INDEX_TILE_CACHE_MB: DATA/cache/{thumbnails,tiles,uploads/<id>},
atomic writes, least recently used evicted) and returned as PNG bytes. A slide's file is checked
against the catalog before any cached image is served (a replaced file is 409); an upload's images
leave the cache with the upload (issue 24). Results carry ids and coordinates, never URLs: the web
layer alone makes those (`web/urls.py`).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eagle_index.errors import EagleIndexError, InputError, NotFoundError
from eagle_index.tiles import Tile

THUMB_SIZES = (160, 256, 320, 512, 768, 1024)
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class SlideTiles:
    """A stored slide's tiles from its artifact: tile side, top candidates (best first), every tissue tile if asked."""

    tile_um: float
    candidates: list[Tile]  # slide_rank 1 = best
    tiles: list[Tile] | None = None


class MediaService:
    """Thumbnails, tile images and tile positions. Narrow collaborators: the settings, the viewer
    (file checks against the catalog, the one image cache), the read-only listing, and the
    search service's cached tile selection (`stored_tiles`: the one selection, same as the vectors')."""

    def __init__(self, settings, viewer, browse, stored_tiles):
        self.settings = settings
        self.viewer = viewer
        self.browse = browse
        self._stored_tiles = stored_tiles

    @property
    def cache(self):
        """The one capped image cache (EAGLE_INDEX_TILE_CACHE_MB), shared with the viewer's Deep Zoom tiles."""
        return self.viewer.cache

    # -- tile positions ---------------------------------------------------------------------------
    def selected_tiles(self, patient_id: int, slides=None) -> list[Tile]:
        """The patient's selected tiles (same selection and tie rule as its vector), best first."""
        tiles = self._stored_tiles(patient_id)
        if tiles is None:
            return []
        by_name: dict[str, int] = {}
        for row in self.browse.slides_of_patient(patient_id) if slides is None else slides:
            if row.status == "done":
                by_name.setdefault(row.name, row.id)
        return [Tile(name, float(x), float(y), float(a), slide_id=by_name.get(name), patient_rank=i + 1)
                for i, (name, x, y, a) in enumerate(zip(tiles.slide, tiles.x_um, tiles.y_um, tiles.attention))]

    def slide_tiles(self, slide_id: int, all_tiles: bool = False) -> SlideTiles | None:
        """A stored slide's top candidates and tile side (and every tissue tile with `all_tiles`);
        None when the slide has no artifact on this server (not embedded by this catalog)."""
        from eagle_index.store.artifacts import read_slide_candidates

        row, _ = self.browse.slide(slide_id)
        if not row.artifact_path or not Path(row.artifact_path).is_file():
            return None
        cand = read_slide_candidates(Path(row.artifact_path))
        coords, attention, tile_um = _artifact_tiles(row.artifact_path)
        candidates = [Tile(row.name, float(x), float(y), float(a), slide_id=row.id, slide_rank=i + 1)
                      for i, (x, y, a) in enumerate(zip(cand.x_um, cand.y_um, cand.scores))]
        tiles = ([Tile(row.name, float(x), float(y), float(a), slide_id=row.id) for (x, y), a in zip(coords, attention)]
                 if all_tiles else None)
        return SlideTiles(tile_um, candidates, tiles)

    # -- slide images -----------------------------------------------------------------------------
    def slide_thumbnail(self, slide_id: int, size: int, boxes: bool = True) -> bytes:
        """PNG of a catalogued slide, long side `size`; `boxes`: the tissue outline and the patient's
        selected tiles on this slide, else the bare image (pages overlay their own boxes)."""
        row, _ = self.browse.slide(slide_id)
        tiles = self.selected_tiles(row.patient_id) if boxes else None
        return self._thumbnail(row, _size(size), tiles)

    def patient_thumbnail(self, patient: str, size: int) -> bytes:
        """The patient's slide holding most of its selected tiles, with their boxes (404 without a slide file)."""
        size = _size(size)
        pid = self.browse.patient_id(patient)
        slides = [s for s in self.browse.slides_of_patient(pid) if s.path and Path(s.path).is_file()]
        if not slides:
            raise NotFoundError(f"patient {patient!r} has no slide file on this server")
        tiles = self.selected_tiles(pid, slides)
        best = max(slides, key=lambda s: (sum(t.slide_id == s.id for t in tiles), -s.id))
        return self._thumbnail(best, size, tiles)

    def _thumbnail(self, row, size: int, tiles: list[Tile] | None) -> bytes:
        """The file is checked against the catalog first (viewer.verify: gone is 404, replaced since it
        was embedded is 409), also when the cache holds the image (issue 24 item 8)."""
        from eagle_index.slides import make_thumbnail

        self.viewer.verify(row.id)
        boxes = [t for t in tiles or () if t.slide_id == row.id]
        key = hashlib.sha256(repr([(round(t.x_um, 1), round(t.y_um, 1)) for t in boxes]).encode()).hexdigest()[:12]
        relative = f"thumbnails/{row.id}-{_fp(row)}-{size}-{'b' + key if tiles is not None else 'plain'}.png"

        def render():
            try:
                with self._open(row.path, row.mpp) as slide:
                    grid = None
                    if boxes and slide.mpp:
                        grid = _grid([t.x_um for t in boxes], [t.y_um for t in boxes], slide.mpp, self.settings.tiling.tile_um)
                    return make_thumbnail(slide, grid, max_size=size, show_mask=tiles is not None)
            except EagleIndexError as exc:
                raise _slide_file_error(row, exc) from None

        return self._cached_png(relative, render)

    def slide_tile(self, slide_id: int, x_um: float, y_um: float) -> bytes:
        """PNG of one tile of a catalogued slide, as the models saw it (224 px at 2 µm/px).

        Only tiles the pipeline read may be asked for: (x_um, y_um) must be one of the slide's
        tile coordinates in its artifact (within 1 µm), else NotFoundError. The file is checked
        against the catalog first, as for thumbnails.
        """
        from PIL import Image

        from eagle_index.slides import read_tiles

        row, _ = self.browse.slide(slide_id)
        if not row.artifact_path or not Path(row.artifact_path).is_file():
            raise NotFoundError(f"slide {row.name!r} has no tiles (not embedded by this catalog)")
        self.viewer.verify(row.id)
        coords = _artifact_tiles(row.artifact_path)[0]
        distance = np.abs(coords[:, 0] - x_um) + np.abs(coords[:, 1] - y_um)
        index = int(np.argmin(distance)) if len(coords) else -1
        if index < 0 or distance[index] > 1.0:
            raise NotFoundError(f"slide {row.name!r} has no tile at ({x_um:.1f}, {y_um:.1f}) µm")

        def render():
            try:
                with self._open(row.path, row.mpp) as slide:
                    pixels = read_tiles(slide, [coords[index, 0]], [coords[index, 1]], self.settings.tiling)[0]
            except EagleIndexError as exc:
                raise _slide_file_error(row, exc) from None
            return Image.fromarray(pixels)

        return self._cached_png(f"tiles/{row.id}-{_fp(row)}-t{index}.png", render)

    # -- uploads ----------------------------------------------------------------------------------
    # An upload's images live in the one image cache under uploads/<id>/ and leave it with the upload:
    # a request for an upload that is gone drops them, and caching an image of any upload drops those of
    # every upload deleted meanwhile (the server keeps only the latest few uploads).
    def upload_path(self, upload_id: str) -> Path:
        """The stored upload with this generated id (NotFoundError for anything else, its cached images dropped)."""
        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            raise NotFoundError("unknown upload id: an upload id is the 32 hexadecimal characters the upload was answered with")
        folder = self.settings.data_dir / "uploads"
        found = sorted(p for p in folder.glob(f"{upload_id}.*") if p.is_file()) if folder.is_dir() else []
        if not found:
            self.cache.discard(f"uploads/{upload_id}")
            raise NotFoundError("unknown upload id: no such upload on this server (uploads are kept for a while, then deleted)")
        return found[0]

    def upload_thumbnail(self, upload_id: str, size: int) -> bytes:
        from eagle_index.slides import make_thumbnail

        size = _size(size)
        path = self.upload_path(upload_id)

        def render():
            try:
                with self._open(path, None) as slide:
                    return make_thumbnail(slide, None, max_size=size, show_mask=slide.mpp is not None)
            except EagleIndexError as exc:
                raise _upload_error(exc, path) from None

        return self._upload_png(upload_id, f"thumbnail-{size}.png", render)

    def upload_tile(self, upload_id: str, x_um: float, y_um: float) -> bytes:
        """A tile of an uploaded slide; the coordinates must lie on the slide (whole tile inside)."""
        from PIL import Image

        from eagle_index.slides import read_tiles

        path = self.upload_path(upload_id)

        def render():
            try:
                with self._open(path, None) as slide:
                    if slide.mpp is None:
                        raise NotFoundError("this upload has no trustworthy µm/px, so it has no tiles")
                    width_um, height_um = slide.dimensions[0] * slide.mpp, slide.dimensions[1] * slide.mpp
                    tile_um = self.settings.tiling.tile_um
                    if not (0 <= x_um <= width_um - tile_um + 1 and 0 <= y_um <= height_um - tile_um + 1):
                        raise NotFoundError(f"no tile at ({x_um:.1f}, {y_um:.1f}) µm on this upload")
                    pixels = read_tiles(slide, [x_um], [y_um], self.settings.tiling)[0]
            except NotFoundError:
                raise
            except EagleIndexError as exc:
                raise _upload_error(exc, path) from None
            return Image.fromarray(pixels)

        return self._upload_png(upload_id, f"tile-{int(round(x_um))}-{int(round(y_um))}.png", render)

    def _forget_gone_uploads(self) -> None:
        cached = self.cache.root / "uploads"
        if not cached.is_dir():
            return
        present = {p.name.split(".", 1)[0] for p in (self.settings.data_dir / "uploads").glob("*.*")}
        for entry in cached.iterdir():
            if entry.name not in present:
                self.cache.discard(f"uploads/{entry.name}")

    def _upload_png(self, upload_id: str, name: str, render) -> bytes:
        relative = f"uploads/{upload_id}/{name}"
        data = self.cache.get(relative)
        if data is None:
            data = _png_bytes(render())
            self._forget_gone_uploads()
            self.cache.put(relative, data)
        return data

    # -- helpers ----------------------------------------------------------------------------------
    def _open(self, path: str | Path, mpp: float | None):
        from eagle_index.slides import open_slide

        return open_slide(path, mpp_override=mpp, settings=self.settings.tiling, require_mpp=False)

    def _cached_png(self, relative: str, render) -> bytes:
        """The cached PNG at `relative`, else `render()`'s image, encoded and cached (a full cache: served uncached)."""
        data = self.cache.get(relative)
        if data is None:
            data = _png_bytes(render())
            self.cache.put(relative, data)
        return data


def _size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size not in THUMB_SIZES:
        raise InputError(f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
    return size


def _fp(row) -> str:
    """A short, file-name-safe digest of the slide's content fingerprint (cache keys change with the file)."""
    return hashlib.sha256(str(row.fingerprint).encode()).hexdigest()[:16]


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _slide_file_error(row, exc: Exception):
    """A slide file that cannot be opened or read: 409 naming the slide, never the server's path (issue 24 item 11)."""
    from eagle_index.viewer import SlideUnavailableError, one_line

    return SlideUnavailableError(f"slide {row.name!r}: its file cannot be opened: {one_line(exc, row.path)}")


def _upload_error(exc, path: Path):
    """The same error, naming "the uploaded slide" instead of the server's path."""
    from eagle_index.viewer import one_line

    text = one_line(exc, str(path)).replace(path.name, "the uploaded slide")
    try:
        return type(exc)(text)
    except TypeError:
        return exc


def _grid(x_um, y_um, mpp: float, tile_um: float):
    from eagle_index.slides.tiling import TileGrid

    x_um, y_um = np.asarray(x_um, np.float64), np.asarray(y_um, np.float64)
    zeros = np.zeros(len(x_um), np.int64)
    return TileGrid(x_px=np.round(x_um / mpp).astype(np.int64), y_px=np.round(y_um / mpp).astype(np.int64), x_um=x_um, y_um=y_um,
                    col=zeros, row=zeros, tile_um=tile_um, tile_px=0, level=0, level_box_px=0, mpp=mpp, mpp_source="catalog",
                    n_cols=0, n_rows=0)


def _artifact_tiles(path: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(coords (N, 2) µm, raw attention (N,), tile side µm) of every tissue tile, without the features."""
    from eagle_index.formats.h5util import open_h5

    with open_h5(Path(path)) as handle:
        return (np.asarray(handle["coords"][()], dtype=np.float64), np.asarray(handle["attention"][()], dtype=np.float64),
                float(handle.attrs["tile_size_um"]))
