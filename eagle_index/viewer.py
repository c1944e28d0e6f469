"""The slide viewer's data: Deep Zoom tiles from the stored slide files, overlays, the compare view.

Reached as `service.viewer`; the web API only parses requests and renders these results.

- Tiles come from `openslide.deepzoom.DeepZoomGenerator` over the file the catalog records for
  a slide id (`slides.path`); nothing a request sends is ever used as a path. Plain PNG/JPEG
  slides open as `openslide.ImageSlide` (its crops are serialised with a lock: PIL is not
  thread-safe). Open generators are kept in a small thread-safe LRU, keyed by slide id and
  re-opened when the file's size or modification time changes.
- Encoded tiles are cached on disk under DATA/cache/dzi (written to a temp file and renamed);
  the cache (`self.cache`, shared with `service.media`'s thumbnails and tile images of slides and
  uploads: DATA/cache/{thumbnails,tiles,uploads}) has one size cap, and the least recently used
  images are deleted when it is passed.
  A cache that cannot be written (disk full) is skipped, never an error.
- Every tile has a strong ETag derived from the slide's fingerprint, file size and mtime, the
  tile's address and the encoding, so a client can revalidate without the tile being read.
- A file replaced after it was embedded is never shown as that slide (issue 24 item 8): every
  request (descriptor, tiles and their ETags, overlays, the patient's viewer, and `verify` for the
  thumbnails and tile images of `service.media`) stats the file first, before any cache is read.
  Cheap: a size other than the catalog's `size_bytes` is a replacement; a file not modified (mtime
  and ctime, so `cp -p` counts) since the slide row was stored is the same file; otherwise the
  fingerprint is computed once for that state of the file (size, mtime, inode, ctime) and the
  verdict remembered. A replacement is SlideUnavailableError (409) naming the slide, never the path.
- Coordinates: overlays are given in level-0 pixels (what the viewer's image coordinates are,
  `limit_bounds=False`) and in µm (what the artifacts store: µm = px × the slide's MPP).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eagle_index import fingerprint as fingerprints
from eagle_index.atomic import atomic_write_bytes
from eagle_index.errors import EagleIndexError, NotFoundError
from eagle_index.tiles import Tile

log = logging.getLogger(__name__)

FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
MAX_ID = 2**31 - 1
RECORD_TTL_S = 5.0  # slide rows are re-read from the catalog at most this often per slide
CACHE_FOLDERS = ("dzi", "thumbnails", "tiles", "uploads")  # under DATA/cache: the one capped image cache


class SlideUnavailableError(EagleIndexError):
    """A catalogued slide whose file exists but cannot be opened or read (the API answers 409)."""


# -- results -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DziDescriptor:
    slide_id: int
    width: int
    height: int
    tile_size: int
    overlap: int
    format: str
    levels: int
    xml: str
    etag: str

    def as_dict(self) -> dict:
        out = asdict(self)
        del out["xml"], out["etag"]
        return out  # the web layer adds the tile folder's URL (web/urls.py)


@dataclass(frozen=True)
class TileImage:
    data: bytes
    mimetype: str
    etag: str
    cached: bool


@dataclass(frozen=True)
class ViewerSlide:
    id: int
    name: str
    status: str
    viewable: bool
    reason: str | None
    width_px: int | None
    height_px: int | None
    mpp: float | None
    selected_tiles: int


@dataclass(frozen=True)
class PatientViewer:
    """What the viewer can show of a patient; `note` explains when nothing can be shown."""

    patient: str
    slides: list[ViewerSlide]
    selected: list[Tile]  # drawn as boxes (Tile.box_dict)
    tile_um: float
    note: str | None
    # Raw CHIEF attention over all of the patient's embedded slides: one heatmap scale for all of them
    # (the compare view takes the union of both patients' ranges), so colours mean the same on every slide.
    attention_range: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["selected"] = [t.box_dict() for t in self.selected]
        out["attention_range"] = list(self.attention_range) if self.attention_range else None
        return out


@dataclass(frozen=True)
class SlideOverlays:
    """Everything drawn over one slide: its Deep Zoom geometry, every tissue tile with its CHIEF
    attention (columns, same order as the artifact), and the patient's selected tiles on it."""

    slide_id: int
    slide: str
    patient: str
    dzi: dict
    mpp: float | None
    tile_um: float
    tile_px: float | None
    tissue: dict = field(default_factory=dict)  # columns x_um, y_um, x_px, y_px, attention
    attention_min: float | None = None
    attention_max: float | None = None
    selected: list[Tile] = field(default_factory=list)
    note: str | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["selected"] = [t.box_dict() for t in self.selected]
        return out


@dataclass(frozen=True)
class ComparedTiles:
    """One row of the compare view: a query tile and its closest hit tile, boxes drawn on both
    viewers (search's `results.TilePair` carries the same match as flat micrometre fields)."""

    rank: int
    similarity: float
    query: Tile
    hit: Tile

    def as_dict(self) -> dict:
        return {"rank": self.rank, "similarity": self.similarity, "query": self.query.box_dict(), "hit": self.hit.box_dict()}


@dataclass(frozen=True)
class CompareView:
    query: PatientViewer
    hit: PatientViewer
    pairs: list[ComparedTiles]
    note: str | None

    def as_dict(self) -> dict:
        return {"query": self.query.as_dict(), "hit": self.hit.as_dict(), "pairs": [p.as_dict() for p in self.pairs], "note": self.note}


@dataclass(frozen=True)
class _Record:
    """The catalog's row of a slide, as the viewer needs it."""

    id: int
    patient_id: int
    patient: str
    name: str
    path: str | None
    fingerprint: str
    status: str
    mpp: float | None
    width_px: int | None
    height_px: int | None
    artifact_path: str | None
    read_at: float
    size_bytes: int | None = None
    stored_at: float | None = None  # when the slide row was stored (epoch seconds), if known


def _epoch(value) -> float | None:
    """A catalog datetime (naive UTC) as epoch seconds."""
    from datetime import timezone

    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def _record_of(row, patient: str | None, now: float) -> "_Record":
    """`row`: a store.listing.SlideRecord."""
    return _Record(row.id, row.patient_id, patient, row.name, row.path, row.fingerprint, row.status, row.mpp, row.width_px,
                   row.height_px, row.artifact_path, now, row.size_bytes, _epoch(row.created_at))


class _Open:
    def __init__(self, stamp: str, slide, generator, lock: threading.Lock | None):
        self.stamp, self.slide, self.generator, self.lock = stamp, slide, generator, lock


# -- the disk cache ------------------------------------------------------------------------------------
class TileCache:
    """Encoded tiles under `root`, at most about `cap_bytes`, the least recently used evicted first.

    The order is kept here (a hit or a write makes a tile the most recent), not read back from
    file times, whose resolution (a clock tick) ties tiles used in a row. The files already there
    at the first write (an earlier run's) come first, oldest modification time first; a hit also
    refreshes the file's time so that the order survives a restart. Writes are atomic (temp file
    + rename); a failed write or eviction is logged, never raised."""

    def __init__(self, root: Path, cap_bytes: int, folders: tuple[str, ...] | None = None):
        self.root = Path(root)
        self.cap = int(cap_bytes)
        self.folders = folders  # the subfolders of root that are this cache (None: all of root)
        self._lock = threading.Lock()
        self._order: OrderedDict[Path, int] | None = None  # path -> size, least recently used first
        self._size = 0  # sum of self._order's sizes

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def get(self, relative: str) -> bytes | None:
        if not self.enabled:
            return None
        path = self.root / relative
        try:
            data = path.read_bytes()
        except OSError:
            return None
        with self._lock:
            if self._order is not None and path in self._order:
                self._order.move_to_end(path)
        try:
            os.utime(path)
        except OSError:
            pass
        return data

    def put(self, relative: str, data: bytes) -> bool:
        if not self.enabled or len(data) > self.cap:
            return False
        path = self.root / relative
        try:
            atomic_write_bytes(path, data, durable=False)  # a cache: rebuilt if a crash loses it
        except OSError as exc:
            log.warning("tile cache: cannot write %s (%s); serving the tile uncached", path, exc)
            self.evict(target=self.cap // 2)  # a full disk: make room for the next writes
            return False
        with self._lock:
            order = self._known()
            self._size += len(data) - order.pop(path, 0)
            order[path] = len(data)
            over = self._size > self.cap
        if over:
            self.evict()
        return True

    def _known(self) -> OrderedDict[Path, int]:
        """The tiles in LRU order (under the lock); the first call reads them from disk, by modification time."""
        if self._order is None:
            self._order = OrderedDict((path, size) for _, size, path in sorted(self._files(), key=lambda f: f[0]))
            self._size = sum(self._order.values())
        return self._order

    def _files(self, under: Path | None = None) -> list[tuple[float, int, Path]]:
        out = []
        tops = [under] if under is not None else [self.root / f for f in self.folders] if self.folders else [self.root]
        for top in tops:
            for dirpath, _, names in os.walk(top):
                for name in names:
                    path = Path(dirpath) / name
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    out.append((st.st_mtime, st.st_size, path))
        return out

    def discard(self, relative_folder: str) -> int:
        """Delete every cached file under `relative_folder` (the images of a source that is gone); how many."""
        folder = self.root / relative_folder
        removed = 0
        with self._lock:
            for _, size, path in self._files(folder):
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("image cache: cannot delete %s (%s)", path, exc)
                    continue
                if self._order is not None and path in self._order:
                    self._size -= self._order.pop(path)
            for dirpath, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        return removed

    def size(self) -> int:
        """Bytes on disk now."""
        return sum(size for _, size, _ in self._files())

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used tiles until the cache holds at most `target` bytes (default 80 % of the cap)."""
        target = int(self.cap * 0.8) if target is None else target
        removed = 0
        with self._lock:
            order = self._known()
            kept = []  # tiles that could not be deleted: still there, still counted
            while self._size > target and order:
                path, size = order.popitem(last=False)
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("tile cache: cannot delete %s (%s)", path, exc)
                    kept.append((path, size))
                    continue
                self._size -= size
            for path, size in reversed(kept):
                order[path] = size
                order.move_to_end(path, last=False)
        return removed


# -- the service -----------------------------------------------------------------------------------------
class ViewerService:
    def __init__(self, settings, catalog, searcher, browse):
        """`settings`: the whole Settings (viewer, tiling, data folder); `searcher`: the patients' selected
        tiles and tile pairs (search.SearchService); `browse`: slide rows (store/listing.py)."""
        self.catalog, self.searcher, self.browse, self._tiling = catalog, searcher, browse, settings.tiling
        self.settings = settings.viewer
        # One image cache, one cap (EAGLE_INDEX_TILE_CACHE_MB): Deep Zoom tiles (dzi/), and service.media's thumbnails
        # and tile images of slides (thumbnails/, tiles/) and of uploads (uploads/<id>/, dropped with the upload).
        self.cache = TileCache(settings.data_dir / "cache", self.settings.cache_mb << 20, folders=CACHE_FOLDERS)
        self._open: OrderedDict[int, _Open] = OrderedDict()
        self._open_lock = threading.Lock()
        self._opening: dict[int, threading.Lock] = {}
        self._records: dict[int, _Record] = {}
        self._records_lock = threading.Lock()
        # slide id -> (catalog fingerprint, file state, problem or None): the verdict on that state of the file
        self._verified: dict[int, tuple[str, tuple, str | None]] = {}
        self._verified_lock = threading.Lock()
        self._hashing: dict[int, threading.Lock] = {}

    # -- slide lookup ---------------------------------------------------------------------------
    def _record(self, slide_id: int) -> _Record:
        if not isinstance(slide_id, int) or not 0 < slide_id <= MAX_ID:
            raise NotFoundError(f"unknown slide id {slide_id}")
        now = time.monotonic()
        with self._records_lock:
            cached = self._records.get(slide_id)
        if cached is not None and now - cached.read_at < RECORD_TTL_S:
            return cached
        row, patient = self.browse.slide(slide_id)
        record = _record_of(row, patient, now)
        with self._records_lock:
            self._records[slide_id] = record
        return record

    @staticmethod
    def _file_problem(record: _Record) -> str | None:
        if record.status == "superseded":  # its path holds other content now (issue 24): never show that as this slide
            return f"slide {record.name!r} was superseded: its file {Path(record.path).name!r} now holds another slide"
        if not record.path:
            return f"slide {record.name!r} has no slide file on this server (its features or vectors were imported)"
        if not Path(record.path).is_file():
            return (f"slide {record.name!r}: its file {Path(record.path).name!r} is no longer where it was ingested "
                    f"(moved or deleted); put it back or ingest it again")
        return None

    # -- is the file still the one that was embedded? (issue 24 item 8) -----------------------------
    def verify(self, slide_id: int) -> None:
        """NotFoundError when the slide's file is gone, SlideUnavailableError (409) when it was replaced
        after the slide was embedded; nothing when it may be shown. Cheap: one stat, then a remembered verdict."""
        self._checked_file(self._record(slide_id))

    def _checked_file(self, record: _Record) -> os.stat_result:
        problem = self._file_problem(record)
        if problem:
            raise NotFoundError(problem)
        try:
            st = os.stat(record.path)
        except OSError:
            raise NotFoundError(f"slide {record.name!r}: its file {Path(record.path).name!r} is no longer where it was "
                                f"ingested (moved or deleted); put it back or ingest it again") from None
        problem = self._replaced(record, st)
        if problem:
            raise SlideUnavailableError(problem)
        return st

    def _replaced(self, record: _Record, st: os.stat_result) -> str | None:
        """Why the file at the slide's path is not the slide that was embedded, or None."""
        state = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        with self._verified_lock:
            known = self._verified.get(record.id)
        if known is not None and known[:2] == (record.fingerprint, state):
            return known[2]
        name = Path(record.path).name
        replaced = (f"slide {record.name!r}: its file {name!r} was replaced after the slide was embedded (its content is "
                    f"not the one the catalog recorded), so its tiles and attention would be drawn over other pixels; "
                    f"put the original back or ingest the file again")
        if record.size_bytes is not None and record.size_bytes != st.st_size:
            problem = replaced
        elif record.stored_at is not None and max(st.st_mtime, st.st_ctime) <= record.stored_at:
            problem = None  # not written since the slide was stored: the same file
        elif not str(record.fingerprint).startswith("sha256:"):
            problem = None  # not a content fingerprint (e.g. imported features): nothing to compare with
        else:
            with self._verified_lock:
                hashing = self._hashing.setdefault(record.id, threading.Lock())
            with hashing:  # one thread hashes a changed file; the others wait for its verdict
                with self._verified_lock:
                    known = self._verified.get(record.id)
                if known is not None and known[:2] == (record.fingerprint, state):
                    return known[2]
                try:
                    same = fingerprints.slide_fingerprint(Path(record.path)) == record.fingerprint
                except EagleIndexError as exc:
                    raise SlideUnavailableError(f"slide {record.name!r}: its file {name!r} cannot be read: "
                                                f"{_one_line(exc, record.path)}") from None
                problem = None if same else replaced
        with self._verified_lock:
            self._verified[record.id] = (record.fingerprint, state, problem)
        if problem:
            self._drop(record.id)
        return problem

    def _file_stamp(self, record: _Record) -> str:
        st = self._checked_file(record)
        text = f"{record.fingerprint}|{st.st_size}|{st.st_mtime_ns}|{self.settings.tile_size}|{self.settings.overlap}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _generator(self, record: _Record) -> _Open:
        stamp = self._file_stamp(record)
        with self._open_lock:
            entry = self._open.get(record.id)
            if entry is not None and entry.stamp == stamp:
                self._open.move_to_end(record.id)
                return entry
            opening = self._opening.setdefault(record.id, threading.Lock())
        with opening:  # one thread opens a slide; the others wait for it
            with self._open_lock:
                entry = self._open.get(record.id)
                if entry is not None and entry.stamp == stamp:
                    return entry
            entry = self._open_file(record, stamp)
            with self._open_lock:
                self._open[record.id] = entry
                self._open.move_to_end(record.id)
                while len(self._open) > self.settings.open_slides:
                    self._open.popitem(last=False)  # closed by the garbage collector once no request uses it
        return entry

    def _open_file(self, record: _Record, stamp: str) -> _Open:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        try:
            slide = openslide.open_slide(record.path)
            generator = DeepZoomGenerator(slide, tile_size=self.settings.tile_size, overlap=self.settings.overlap,
                                          limit_bounds=False)
        except Exception as exc:  # OpenSlideError, UnidentifiedImageError, OSError, ...
            raise SlideUnavailableError(f"slide {record.name!r}: its file cannot be opened: "
                                        f"{_one_line(exc, record.path)}") from exc
        lock = threading.Lock() if isinstance(slide, openslide.ImageSlide) else None
        return _Open(stamp, slide, generator, lock)

    def _drop(self, slide_id: int) -> None:
        with self._open_lock:
            self._open.pop(slide_id, None)

    # -- Deep Zoom ---------------------------------------------------------------------------------
    def dzi(self, slide_id: int, fmt: str = "jpeg") -> DziDescriptor:
        if fmt not in FORMATS:
            raise NotFoundError(f"tile format must be one of {', '.join(FORMATS)}")
        record = self._record(slide_id)
        entry = self._generator(record)
        gen = entry.generator
        width, height = gen.level_dimensions[-1]
        return DziDescriptor(record.id, int(width), int(height), self.settings.tile_size, self.settings.overlap, fmt,
                             gen.level_count, gen.get_dzi(fmt), f'"dzi-{entry.stamp}-{fmt}"')

    def tile_etag(self, slide_id: int, level: int, col: int, row: int, fmt: str) -> str:
        """The ETag a tile will have (cheap: no pixels read); NotFoundError for an address outside the slide."""
        entry, _ = self._checked(slide_id, level, col, row, fmt)
        return self._etag(entry.stamp, level, col, row, fmt)

    def _etag(self, stamp: str, level: int, col: int, row: int, fmt: str) -> str:
        quality = self.settings.jpeg_quality if fmt == "jpeg" else 0
        return f'"{stamp}-{level}-{col}-{row}-q{quality}.{fmt}"'

    def _checked(self, slide_id: int, level: int, col: int, row: int, fmt: str) -> tuple[_Open, _Record]:
        if fmt not in FORMATS:
            raise NotFoundError(f"tile format must be one of {', '.join(FORMATS)}, got {str(fmt)[:20]!r}")
        record = self._record(slide_id)
        entry = self._generator(record)
        gen = entry.generator
        if not (isinstance(level, int) and 0 <= level < gen.level_count):
            raise NotFoundError(f"slide {record.name!r} has Deep Zoom levels 0 to {gen.level_count - 1}, not {level}")
        cols, rows = gen.level_tiles[level]
        if not (isinstance(col, int) and isinstance(row, int) and 0 <= col < cols and 0 <= row < rows):
            raise NotFoundError(f"slide {record.name!r} level {level} has {cols} × {rows} tiles; ({col}, {row}) is outside")
        return entry, record

    def tile(self, slide_id: int, level: int, col: int, row: int, fmt: str = "jpeg") -> TileImage:
        entry, record = self._checked(slide_id, level, col, row, fmt)
        etag = self._etag(entry.stamp, level, col, row, fmt)
        quality = self.settings.jpeg_quality if fmt == "jpeg" else 0
        relative = f"dzi/{record.id}/{entry.stamp}/{level}/{col}_{row}_q{quality}.{fmt}"
        data = self.cache.get(relative)
        if data is not None:
            return TileImage(data, FORMATS[fmt], etag, True)
        try:
            if entry.lock is not None:
                with entry.lock:
                    image = entry.generator.get_tile(level, (col, row))
            else:
                image = entry.generator.get_tile(level, (col, row))
        except Exception as exc:  # a tile that fails to decode: OpenSlide's handle is unusable afterwards
            self._drop(record.id)
            raise SlideUnavailableError(f"slide {record.name!r}: its file cannot be read at level {level} "
                                        f"({col}, {row}): {_one_line(exc, record.path)}") from exc
        buffer = io.BytesIO()
        if fmt == "jpeg":
            image.convert("RGB").save(buffer, format="JPEG", quality=self.settings.jpeg_quality)
        else:
            image.save(buffer, format="PNG", compress_level=3)
        data = buffer.getvalue()
        self.cache.put(relative, data)
        return TileImage(data, FORMATS[fmt], etag, False)

    # -- overlays ----------------------------------------------------------------------------------
    def _selected(self, patient_id: int, slides: list[_Record]) -> list[Tile]:
        """The patient's selected tiles (rank order, same selection as its EAGLE vector)."""
        tiles = self.searcher.stored_tiles(patient_id)
        if tiles is None:
            return []
        by_name: dict[str, _Record] = {}
        for rec in slides:
            if rec.status == "done":
                by_name.setdefault(rec.name, rec)
        tile_um = self._tiling.tile_um
        out = []
        for i, (name, x, y, a) in enumerate(zip(tiles.slide, tiles.x_um, tiles.y_um, tiles.attention)):
            rec = by_name.get(name)
            out.append(_box(rec, name, float(x), float(y), float(a), tile_um, rank=i + 1))
        return out

    def _patient_slides(self, patient_id: int) -> list[_Record]:
        now = time.monotonic()
        patient = self.catalog.external_ids([patient_id]).get(patient_id)
        rows = self.browse.slides_of_patient(patient_id, superseded=False)  # issue 24: never a path's new content
        return [_record_of(r, patient, now) for r in rows]

    def _patient_id(self, external_id: str) -> int:
        ids = self.catalog.patient_ids([external_id])
        if external_id not in ids:
            raise NotFoundError(f"unknown patient {external_id!r}")
        return ids[external_id]

    def patient(self, external_id: str) -> PatientViewer:
        """The patient's slides as the viewer sees them, its selected tiles, and why nothing shows (if so)."""
        pid = self._patient_id(external_id)
        slides = self._patient_slides(pid)
        selected = self._selected(pid, slides)
        counts: dict[int, int] = {}
        for box in selected:
            if box.slide_id is not None:
                counts[box.slide_id] = counts.get(box.slide_id, 0) + 1
        items = []
        for rec in slides:
            problem = self._file_problem(rec)
            if problem is None:
                try:
                    self._checked_file(rec)  # replaced since it was embedded (issue 24 item 8)
                except EagleIndexError as exc:
                    problem = str(exc)
            items.append(ViewerSlide(rec.id, rec.name, rec.status, problem is None, problem, rec.width_px, rec.height_px,
                                     rec.mpp, counts.get(rec.id, 0)))
        note = None
        if not slides:
            note = (f"patient {external_id!r} has no slides here: its vectors were imported, so there is no tissue to "
                    f"show (search and labels still work)")
        elif not any(s.viewable for s in items):
            note = f"none of patient {external_id!r}'s slide files is available to this server: " + items[0].reason
        return PatientViewer(external_id, items, selected, self._tiling.tile_um, note,
                             _attention_range([r for r, item in zip(slides, items) if item.viewable]))

    def overlays(self, slide_id: int) -> SlideOverlays:
        """Deep Zoom geometry + tissue tiles with attention + the patient's selected tiles on this slide."""
        from eagle_index.formats.h5util import open_h5

        record = self._record(slide_id)
        dzi = self.dzi(slide_id).as_dict()
        tile_um = self._tiling.tile_um
        mpp = record.mpp
        selected = [b for b in self._selected(record.patient_id, self._patient_slides(record.patient_id))
                    if b.slide_id == record.id]
        if not record.artifact_path or not Path(record.artifact_path).is_file():
            return SlideOverlays(record.id, record.name, record.patient, dzi, mpp, tile_um, tile_um / mpp if mpp else None,
                                 selected=selected, note="no tissue tiles: this slide was not embedded by this catalog")
        try:
            with open_h5(Path(record.artifact_path)) as handle:
                coords = np.asarray(handle["coords"][()], dtype=np.float64).reshape(-1, 2)
                attention = np.asarray(handle["attention"][()], dtype=np.float64)
                tile_um = float(handle.attrs.get("tile_size_um", tile_um))
        except (EagleIndexError, KeyError, OSError) as exc:
            return SlideOverlays(record.id, record.name, record.patient, dzi, mpp, tile_um, tile_um / mpp if mpp else None,
                                 selected=selected, note=f"no tissue tiles: the slide's artifact cannot be read "
                                                        f"({_one_line(exc, record.artifact_path)})")
        tissue = {"x_um": _round(coords[:, 0]), "y_um": _round(coords[:, 1]), "attention": [float(a) for a in attention]}
        if mpp:
            tissue["x_px"] = _round(coords[:, 0] / mpp)
            tissue["y_px"] = _round(coords[:, 1] / mpp)
        finite = attention[np.isfinite(attention)]
        return SlideOverlays(
            record.id, record.name, record.patient, dzi, mpp, tile_um, tile_um / mpp if mpp else None, tissue,
            float(finite.min()) if len(finite) else None, float(finite.max()) if len(finite) else None, selected,
            None if mpp else "no µm/px recorded for this slide: tiles cannot be placed on it")

    # -- compare -----------------------------------------------------------------------------------
    def compare(self, query: str, hit: str, pairs: int = 10) -> CompareView:
        """Both patients' viewers and the explanation's matching tile pairs (the search service's)."""
        left, right = self.patient(query), self.patient(hit)
        matched = self.searcher.tile_pairs(query, hit, pairs)
        note = None
        out: list[ComparedTiles] = []
        if matched is None:
            note = "no matching tile pairs: one of the two patients has no slide artifacts (imported vectors)"
        else:
            tile_um = self._tiling.tile_um
            q_by_name = {s.name: s for s in self._patient_slides(self._patient_id(query)) if s.status == "done"}
            h_by_name = {s.name: s for s in self._patient_slides(self._patient_id(hit)) if s.status == "done"}
            for i, pair in enumerate(matched):
                q = _box(q_by_name.get(pair.query_slide), pair.query_slide, pair.query_x_um, pair.query_y_um,
                         float("nan"), tile_um)
                h = _box(h_by_name.get(pair.hit_slide), pair.hit_slide, pair.hit_x_um, pair.hit_y_um,
                         float("nan"), tile_um)
                out.append(ComparedTiles(i + 1, float(pair.similarity), _with_attention(q, left.selected), _with_attention(h, right.selected)))
        return CompareView(left, right, out, note)


# -- helpers ----------------------------------------------------------------------------------------------
def one_line(exc: BaseException, path: str | None = None) -> str:
    """The exception in one line, with the file's server path (if given) replaced by its name (issue 24 item 11)."""
    text = str(exc)
    if path:
        for form in (str(path), os.path.realpath(path)):
            text = text.replace(form, Path(path).name)
        for folder in (str(Path(path).parent), os.path.dirname(os.path.realpath(path))):
            if folder not in ("", ".", os.sep):
                text = text.replace(folder + os.sep, "")
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


_one_line = one_line


def _attention_range(slides: list[_Record]) -> tuple[float, float] | None:
    """Finite min and max of the raw CHIEF attention stored in these slides' artifacts (None if there is none)."""
    from eagle_index.formats.h5util import open_h5

    lo, hi = np.inf, -np.inf
    for rec in slides:
        if rec.status != "done" or not rec.artifact_path or not Path(rec.artifact_path).is_file():
            continue
        try:
            with open_h5(Path(rec.artifact_path)) as handle:
                attention = np.asarray(handle["attention"][()], dtype=np.float64)
        except (EagleIndexError, KeyError, OSError):
            continue  # the slide's own overlays say why; the others still share a scale
        finite = attention[np.isfinite(attention)]
        if len(finite):
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (lo, hi) if lo <= hi else None


def _round(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def _box(record: _Record | None, name: str, x_um: float, y_um: float, attention: float, tile_um: float,
         rank: int | None = None) -> Tile:
    """A tile drawn on a slide of `record` (None: no catalogued slide), in its µm and level-0 px."""
    has_file = record is not None and bool(record.path) and Path(record.path).is_file()
    tile = Tile(name, float(x_um), float(y_um), float(attention), slide_id=record.id if record is not None else None,
                patient_rank=rank, has_file=has_file)
    return tile.in_pixels(record.mpp if record is not None else None, tile_um)


def _with_attention(box: Tile, selected: list[Tile]) -> Tile:
    """The pair's tile with its rank and attention from the patient's selection (pairs come from it)."""
    from dataclasses import replace

    for s in selected:
        if s.same_place(box):
            return replace(box, patient_rank=s.patient_rank, attention=s.attention)
    return replace(box, attention=0.0)
