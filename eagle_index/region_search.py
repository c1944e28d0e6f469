"""Region search: "where else in the archive is there tissue like this?" (reached as `service.regions`).

The query is one Virchow2 class token (L2-normalized) from:
- a stored tile: a patient's selected tile by rank (`{"patient", "tile"}`), or a slide's stored
  tile at a point (`{"slide", "x_um", "y_um"}`; a point on no stored tile is read from the
  slide file, as the grid tile that contains it, and encoded);
- a region of a stored slide (`{"slide", "box": [x, y, w, h]}` µm), read from the slide file;
- an annotation of a stored slide (`{"slide", "annotation": name or id}`, issue 23): the tiles of the
  box grid over its bounding box whose centre lies inside it (at most MAX_ANNOTATION_TILES), averaged
  as a box is; a point annotation is a point query (see `_annotation_query`, docs/annotations.md);
- an image file (`image`, with `mpp` unless the file records a resolution).
A region or image is resampled to 2.0 µm/px with the pipeline's own filter (cv2.INTER_AREA,
`eagle_index.slides.tiling.RESIZE_FILTER`; slide regions are read with the pipeline's tile
reader, so a stored tile read this way gives the very pixels it was embedded from), then
centre-cropped to whole 224 px tiles (at most 4 × 4 central tiles); tiles the Canny rule
calls background are dropped (unless all are); the query is the mean class token of the
remaining tiles (EAGLE's own pooling), encoded with the archive's Virchow2 (the loaded
models must give the tile set's signature: the archive is never searched with other weights).

Search. The tile index (`store/tile_index.py`) returns tiles by cosine; tiles are taken best
first (ties by tile id), at most `per_patient` per patient, until `k` tiles; patients come
back grouped, ordered by their best tile. Filters are the patient search's (`SearchFilters`:
labels, cohorts, score floor, excluded patients, same site / same label value); the query's
own patient is left out unless `include_same_patient`. With an allowed set (labels, cohorts)
of few tiles, those tiles are scored exactly; otherwise the index is asked for more tiles
(4× per round) until k are accepted or it is exhausted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from eagle_index.errors import InputError, NotFoundError
from eagle_index.formats.suffixes import IMAGE_SUFFIXES
from eagle_index.limits import MAX_K
from eagle_index.region_queries import (AnnotationQuery, BoxQuery, ImageQuery, PointQuery, QueryToken, RegionQuery,
                                        TileRankQuery, as_int, region_query)
from eagle_index.store import tiles_repo
from eagle_index.store.validation import l2_normalized
from eagle_index.tiles import Tile

log = logging.getLogger(__name__)

MAX_QUERY_TILES_SIDE = 4  # an image or box query uses at most 4 x 4 central tiles
EXACT_TILE_LIMIT = 50_000  # an allowed set with at most this many tiles is scored exactly
MAX_ANNOTATION_TILES = 64  # an annotation query averages at most this many of its tiles (evenly spaced)


# -- results ---------------------------------------------------------------------------------
@dataclass
class PatientRegions:
    patient: str
    score: float
    tiles: list[Tile]  # each with its `score` and level-0 px (Tile.hit_dict)
    labels: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"patient": self.patient, "score": self.score, "tiles": [t.hit_dict() for t in self.tiles], "labels": self.labels}


@dataclass
class RegionSearchResult:
    query: dict
    patients: list[PatientRegions]
    filters: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"query": self.query, "patients": [p.as_dict() for p in self.patients], "filters": self.filters, "notes": self.notes}

    @classmethod
    def from_dict(cls, data: dict) -> "RegionSearchResult":
        patients = [PatientRegions(p["patient"], p["score"], [Tile.from_hit_dict(t) for t in p["tiles"]], p.get("labels", {}))
                    for p in data.get("patients", [])]
        return cls(data.get("query", {}), patients, data.get("filters", {}), data.get("notes", []))


# -- image input -----------------------------------------------------------------------------
def image_resolution(path: Path) -> float | None:
    """µm/px recorded in an image file (PNG pHYs, TIFF/JPEG resolution), if it is a plausible scan resolution."""
    from eagle_index.limits import open_image
    from eagle_index.slides.mpp import MPP_MAX_UM, MPP_MIN_UM

    with open_image(path) as img:  # the header only; an image over the pixel limit is refused here
        dpi = img.info.get("dpi")
    if not dpi:
        return None
    try:
        x = float(dpi[0])
    except (TypeError, ValueError, IndexError):
        return None
    if not math.isfinite(x) or x <= 0:
        return None
    mpp = 25400.0 / x
    return mpp if MPP_MIN_UM <= mpp <= MPP_MAX_UM else None  # 72/96 dpi screen defaults are not scans


def read_image(path: Path) -> np.ndarray:
    """The image as RGB; its size is checked from the header (limits.MAX_IMAGE_PIXELS) before it is decoded."""
    from PIL import Image

    from eagle_index.limits import open_image

    with open_image(path) as img:
        try:
            return np.asarray(img.convert("RGB"))
        except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from None


def image_tiles(rgb: np.ndarray, mpp: float, target_mpp: float, tile_px: int, source: str) -> tuple[np.ndarray, dict]:
    """Centre-crop an RGB region to whole tiles (at most 4 x 4) and resample only that crop to target_mpp
    with the pipeline's filter: the resampled pixels are bounded by the tiles (896 x 896 px at most),
    never by the image's size in µm (a small image at a coarse µm/px is not blown up whole)."""
    import cv2

    from eagle_index.slides.tiling import RESIZE_FILTER

    height, width = rgb.shape[:2]
    tile_um = target_mpp * tile_px
    w_um, h_um = width * mpp, height * mpp
    new_w, new_h = int(round(w_um / target_mpp)), int(round(h_um / target_mpp))  # the image's size at target_mpp
    if new_w < tile_px or new_h < tile_px:
        raise InputError(f"{source}: {w_um:.0f} × {h_um:.0f} µm ({width} × {height} px at {mpp:g} µm/px) is smaller than one tile; "
                         f"the minimum is {tile_um:.0f} × {tile_um:.0f} µm ({tile_px} px at {target_mpp:g} µm/px)")
    cols, rows = min(new_w // tile_px, MAX_QUERY_TILES_SIDE), min(new_h // tile_px, MAX_QUERY_TILES_SIDE)
    x0, y0 = (new_w - cols * tile_px) // 2, (new_h - rows * tile_px) // 2  # the crop, in target pixels
    out_w, out_h = cols * tile_px, rows * tile_px
    if (new_w, new_h) == (width, height):  # already at target_mpp: a plain crop
        region = rgb[y0:y0 + out_h, x0:x0 + out_w]
    else:  # the crop's edges mapped back to source pixels; only that crop is resampled
        sx, sy = width / new_w, height / new_h
        left, top = int(round(x0 * sx)), int(round(y0 * sy))
        right = min(width, max(left + 1, int(round((x0 + out_w) * sx))))
        bottom = min(height, max(top + 1, int(round((y0 + out_h) * sy))))
        region = cv2.resize(np.ascontiguousarray(rgb[top:bottom, left:right]), (out_w, out_h), interpolation=RESIZE_FILTER)
    tiles = np.stack([region[r * tile_px:(r + 1) * tile_px, c * tile_px:(c + 1) * tile_px]
                      for r in range(rows) for c in range(cols)])
    facts = {"size_um": [round(w_um, 1), round(h_um, 1)], "mpp": mpp, "grid": [cols, rows],
             "crop_um": [round(x0 * target_mpp, 1), round(y0 * target_mpp, 1), cols * tile_um, rows * tile_um]}
    return np.ascontiguousarray(tiles, dtype=np.uint8), facts


# -- the service -------------------------------------------------------------------------------
class RegionSearchService:
    def __init__(self, settings, catalog, searcher, annotations, query_models):
        """Collaborators, not the facade: patient search's filters (`searcher`), the slides' annotations and
        `query_models(signatures)`, the models that encode a query."""
        self.settings, self.catalog, self.searcher, self.annotations = settings, catalog, searcher, annotations
        self._query_models = query_models
        self._backfilled = False  # slides from before revision 0005 are filled in once per process

    @cached_property
    def index(self):
        from eagle_index.store.tile_index import TileIndex

        return TileIndex(self.settings.index_dir, self.catalog, self.settings.index)

    # -- maintenance ------------------------------------------------------------------------------
    def backfill(self) -> int:
        """Store the tiles of slides embedded before tile tokens existed (from their artifacts); returns tiles stored."""
        stored = 0
        top_k = self.settings.eagle.top_k
        for pid in tiles_repo.patients_missing_tiles(self.catalog):
            stored += self.catalog.write(lambda session, p=pid: tiles_repo.sync_patient_from_artifacts(session, p, top_k))
        if stored:
            log.info("tile tokens backfilled from artifacts: %d tiles", stored)
        self._backfilled = True
        return stored

    def follow(self) -> None:
        """Load the tile indexes that have files, so that commits update them in place (before ingesting)."""
        for info in tiles_repo.tile_sets(self.catalog):
            if self.index.paths(info.signature)[0].exists():
                try:
                    self.index.get(info.signature)
                except Exception as exc:  # noqa: BLE001 - an unreadable index is rebuilt at the next query anyway
                    log.warning("tile index %s not loaded: %s", info.signature, exc)

    def sync(self, force: bool = False) -> list[dict]:
        """Backfill, then check every tile index against the catalog (rebuild stale ones, or all with force)."""
        self.backfill()
        out = []
        for info in tiles_repo.tile_sets(self.catalog):
            loaded = self.index.rebuild(info) if force else self.index.get(info.signature)  # rebuild swaps it in
            out.append({"kind": "tiles", "signature": info.signature, "count": loaded.ntotal, "index_type": loaded.index_type})
        return out

    def stats(self) -> list[dict]:
        return [{"signature": s.signature, "dim": s.dim, "count": s.count, "generation": s.generation} for s in tiles_repo.tile_sets(self.catalog)]

    # -- queries --------------------------------------------------------------------------------
    def search(self, query: dict | RegionQuery | None, k: int = 20, per_patient: int = 3, filters=None,
               include_same_patient: bool = False, image: Path | None = None, mpp: float | None = None) -> RegionSearchResult:
        """Region search; `query` is a typed query (`region_queries`) or its JSON shape: {"patient", "tile"},
        {"slide" (name or id), "x_um", "y_um"}, {"slide", "box": [x, y, w, h]}, {"slide", "annotation"},
        or {} with `image` (a file; `mpp` µm/px unless it records one)."""
        from eagle_index.search import SearchFilters

        if not 1 <= int(k) <= MAX_K:
            raise InputError(f"k must be between 1 and {MAX_K}, got {k}")
        if int(per_patient) < 1:
            raise InputError(f"per-patient must be at least 1, got {per_patient}")
        filters = filters or SearchFilters()
        typed = region_query(query, image, mpp)
        if not self._backfilled:  # later slides are stored with their tiles by re-aggregation
            self.backfill()
        encoded = self._query_token(typed)
        tiles = self._top_tiles(encoded.token, encoded.signature, int(k), int(per_patient), filters, encoded.patient_id,
                                include_same_patient)
        info = {**encoded.info, "signature": encoded.signature}
        return RegionSearchResult(query=info, patients=tiles, filters=filters.as_dict(), notes=encoded.notes)

    def _query_token(self, query: RegionQuery) -> QueryToken:
        if isinstance(query, ImageQuery):
            return self._image_query(query.path, query.mpp)
        if isinstance(query, TileRankQuery):
            return self._tile_rank_query(query)
        if isinstance(query, AnnotationQuery):
            return self._annotation_query(query)
        slide = self._slide(query.slide.name, query.slide.slide_id)
        if isinstance(query, PointQuery):
            return self._point_query(slide, query.x_um, query.y_um)
        assert isinstance(query, BoxQuery)
        return self._box_query(slide, query.box)

    def _tile_rank_query(self, query: TileRankQuery) -> QueryToken:
        patient, rank = query.patient, query.tile
        pid = self.catalog.patient_ids([patient]).get(patient)
        if pid is None:
            raise NotFoundError(f"unknown patient {patient!r}")
        rows = [r for r in tiles_repo.stored_patient_tiles(self.catalog, pid) if r.patient_rank == rank]
        if not rows:
            n = sum(r.patient_rank is not None for r in tiles_repo.stored_patient_tiles(self.catalog, pid))
            raise NotFoundError(f"patient {patient!r} has no stored tile #{rank}"
                                + (f" (it has {n} selected tiles, ranks 1-{n})" if n else " (no slides embedded by this catalog)"))
        row = self._preferred(rows)
        ids, sigs, raw = tiles_repo.load_tokens_by_id(self.catalog, [row.id])
        return QueryToken(raw[0], sigs[0], {"patient": patient, "tile": rank, **_row_facts(row)}, pid)

    @staticmethod
    def _preferred(rows):
        return rows[0]

    def _slide(self, name, slide_id):
        if slide_id is not None:
            return tiles_repo.slide_info(self.catalog, as_int(slide_id, "slide_id"))
        if name is None or str(name).strip() == "":
            raise InputError("a slide name (or slide_id) is required")
        if isinstance(name, int) or str(name).isdigit() and not tiles_repo.slides_named(self.catalog, str(name)):
            return tiles_repo.slide_info(self.catalog, int(name))
        found = [s for s in tiles_repo.slides_named(self.catalog, str(name))]
        if not found:
            raise NotFoundError(f"unknown slide {name!r}")
        done = [s for s in found if s.status == "done"] or found
        if len({s.id for s in done}) > 1:
            raise InputError(f"slide name {name!r} matches {len(done)} slides (patients {', '.join(s.patient for s in done)}): give slide_id")
        return done[0]

    def _point_query(self, slide, x_um: float, y_um: float) -> QueryToken:
        tile_um = self.settings.tiling.tile_um
        stored = tiles_repo.slide_tiles(self.catalog, slide.id)
        inside = [(r, sig) for r, sig in stored if r.x_um - 1 <= x_um < r.x_um + tile_um and r.y_um - 1 <= y_um < r.y_um + tile_um]
        if inside:
            sigs = sorted({sig for _, sig in inside})
            preferred = self._models_signature(required=False) if len(sigs) > 1 else None
            signature = preferred if preferred in sigs else max(sigs, key=lambda s: tiles_repo.tile_set(self.catalog, s).count)
            row = min((r for r, sig in inside if sig == signature), key=lambda r: abs(r.x_um - x_um) + abs(r.y_um - y_um))
            _, _, raw = tiles_repo.load_tokens_by_id(self.catalog, [row.id])
            return QueryToken(raw[0], signature, {"slide": slide.name, "slide_id": slide.id, "x_um": row.x_um, "y_um": row.y_um,
                                                  "patient": slide.patient, "stored_tile": True, **_row_facts(row)}, slide.patient_id)
        # not a stored candidate: the grid tile containing the point, read from the slide file and encoded
        col, row_ = math.floor(x_um / tile_um), math.floor(y_um / tile_um)
        box = (col * tile_um, row_ * tile_um, tile_um, tile_um)
        encoded = self._box_query(slide, box, point=(x_um, y_um))
        encoded.notes.insert(0, f"({x_um:.0f}, {y_um:.0f}) µm is on none of the slide's stored tiles: the grid tile containing it was encoded")
        encoded.info.update({"x_um": box[0], "y_um": box[1], "stored_tile": False})
        encoded.info.pop("box", None)
        return encoded

    def _box_query(self, slide, box: tuple[float, float, float, float], point: tuple[float, float] | None = None) -> QueryToken:
        """A box of a slide read and encoded; for a point query (`point`), the box is the grid tile containing
        the point, and errors speak of the point the user gave."""
        from eagle_index.slides import open_slide, read_tiles

        asked = f"point ({point[0]:.0f}, {point[1]:.0f}) µm" if point is not None else None
        x, y, w, h = box
        settings = self.settings
        tile_um, tile_px = settings.tiling.tile_um, settings.tiling.tile_px
        if w < tile_um - 1e-6 or h < tile_um - 1e-6:
            raise InputError(f"box {w:.0f} × {h:.0f} µm is smaller than one tile; the minimum is {tile_um:.0f} × {tile_um:.0f} µm "
                             f"({tile_px} px at {settings.tiling.target_mpp:g} µm/px)")
        if x < 0 or y < 0:
            raise InputError(f"{asked}: coordinates must not be negative" if asked else "box coordinates must not be negative")
        if not slide.path or not Path(slide.path).is_file():
            raise NotFoundError(f"slide {slide.name!r}: its file is not available here, so "
                                + (f"{asked}, on none of its stored tiles, cannot be read" if asked else "a region of it cannot be read")
                                + " (query a point on one of its stored tiles instead)")
        cols, rows = min(int(w // tile_um + 1e-9), MAX_QUERY_TILES_SIDE), min(int(h // tile_um + 1e-9), MAX_QUERY_TILES_SIDE)
        x0, y0 = x + (w - cols * tile_um) / 2, y + (h - rows * tile_um) / 2
        xs = [x0 + c * tile_um for r in range(rows) for c in range(cols)]
        ys = [y0 + r * tile_um for r in range(rows) for c in range(cols)]
        with open_slide(Path(slide.path), mpp_override=slide.mpp, settings=settings.tiling) as handle:
            mpp = handle.require_mpp()
            width_um, height_um = handle.dimensions[0] * mpp, handle.dimensions[1] * mpp
            if x + w > width_um + 1 or y + h > height_um + 1:
                raise InputError(f"{asked or f'box ({x:.0f}, {y:.0f}, {w:.0f}, {h:.0f}) µm'} lies outside slide {slide.name!r} "
                                 f"({width_um:.0f} × {height_um:.0f} µm)")
            pixels = read_tiles(handle, xs, ys, settings.tiling)
        token, signature, notes, used = self._encode_region(pixels, "box" if point is None else "region around the point")
        info = {"slide": slide.name, "slide_id": slide.id, "patient": slide.patient, "box": [x, y, w, h],
                "tiles": used, "grid": [cols, rows]}
        return QueryToken(token, signature, info, slide.patient_id, notes)

    def _encode_region(self, pixels: np.ndarray, what: str):
        """Tiles read from a slide region -> (mean class token, signature, notes, tiles used): background tiles
        (Canny rule) are left out unless all are."""
        from eagle_index.slides import keep_tiles

        notes: list[str] = []
        tissue = keep_tiles(pixels, self.settings.tiling)
        if tissue.any() and not tissue.all():
            notes.append(f"{int((~tissue).sum())} of {len(pixels)} tiles of the {what} are background (Canny rule) and were left out")
            pixels = pixels[tissue]
        elif not tissue.any():
            notes.append(f"no tile of the {what} passes the tissue rule: all of them were used")
        signature = self._models_signature(required=True)
        return self._encode(pixels), signature, notes, len(pixels)

    def _annotation_query(self, query: AnnotationQuery) -> QueryToken:
        """An annotation of a slide: a point (Point) is a point query; an area (rectangle, polygon with holes,
        multipolygon) reads the tile grid over its bounding box (whole tiles centred in it, as a box query lays
        them) and averages the tissue tiles whose centre lies inside the area, at most MAX_ANNOTATION_TILES
        (evenly spaced). A rectangle of at most 4 x 4 tiles is the same query as --box over it."""
        from eagle_index.formats import geojson
        from eagle_index.slides import open_slide, read_tiles
        from eagle_index.store import annotations_repo

        annotations = self.annotations
        if query.slide is not None:
            row = annotations.find(query.slide, query.annotation)
        else:
            row = annotations_repo.get(self.catalog, as_int(query.annotation, "annotation"))
        slide = annotations.slide_of(row)
        label = f"annotation {row.id}" + (f" ({row.name!r})" if row.name else "")
        facts = {"id": row.id, "name": row.name, "class_name": row.class_name, "shape": row.shape}
        if row.shape not in ("rectangle", "polygon", "multipolygon", "point") and not (
                row.shape == "multipoint" and len(geojson.points_of(row.geometry)) == 1):
            raise InputError(f"{label} is a {row.shape}: region search needs an area (rectangle, polygon) or one point")
        if not slide.path or not Path(slide.path).is_file():
            raise NotFoundError(f"slide {slide.name!r}: its file is not available here, so {label} cannot be read")
        settings = self.settings
        tile_um = settings.tiling.tile_um
        with open_slide(Path(slide.path), mpp_override=slide.mpp, settings=settings.tiling) as handle:
            mpp = handle.require_mpp()
            width_um, height_um = handle.dimensions[0] * mpp, handle.dimensions[1] * mpp
            if row.shape in ("point", "multipoint"):
                (px, py), = geojson.points_of(row.geometry)
                pixels = None
            else:
                x0, y0, x1, y1 = (v * mpp for v in geojson.bbox(row.geometry))
                w, h = x1 - x0, y1 - y0
                if w < tile_um - 1e-6 or h < tile_um - 1e-6:
                    raise InputError(f"{label} is {w:.0f} × {h:.0f} µm, smaller than one tile; the minimum is "
                                     f"{tile_um:.0f} × {tile_um:.0f} µm (query a point instead)")
                cols, rows = int(w // tile_um + 1e-9), int(h // tile_um + 1e-9)
                gx, gy = x0 + (w - cols * tile_um) / 2, y0 + (h - rows * tile_um) / 2
                xs = np.array([gx + c * tile_um for r in range(rows) for c in range(cols)])
                ys = np.array([gy + r * tile_um for r in range(rows) for c in range(cols)])
                keep = geojson.contains(row.geometry, (xs + tile_um / 2) / mpp, (ys + tile_um / 2) / mpp)
                keep &= (xs >= -1) & (ys >= -1) & (xs + tile_um <= width_um + 1) & (ys + tile_um <= height_um + 1)
                xs, ys = xs[keep], ys[keep]
                if not len(xs):
                    raise InputError(f"{label}: no whole tile ({tile_um:.0f} µm) of the slide has its centre inside it")
                notes_cap = []
                if len(xs) > MAX_ANNOTATION_TILES:
                    pick = np.unique(np.round(np.linspace(0, len(xs) - 1, MAX_ANNOTATION_TILES)).astype(int))
                    notes_cap.append(f"{label} holds {len(xs)} tiles: {len(pick)} of them, evenly spaced, were used")
                    xs, ys = xs[pick], ys[pick]
                pixels = read_tiles(handle, xs.tolist(), ys.tolist(), settings.tiling)
        if pixels is None:
            encoded = self._point_query(slide, px * mpp, py * mpp)
            encoded.info["annotation"] = facts
            return encoded
        token, signature, notes, used = self._encode_region(pixels, "annotation")
        info = {"slide": slide.name, "slide_id": slide.id, "patient": slide.patient, "annotation": facts,
                "bbox_um": [x0, y0, w, h], "tiles": used, "grid": [cols, rows]}
        return QueryToken(token, signature, info, slide.patient_id, notes_cap + notes)

    def _image_query(self, path: Path, mpp: float | None) -> QueryToken:
        from eagle_index.slides import keep_tiles

        if not path.is_file():  # is_file() is True only for regular files: a FIFO is never opened
            raise InputError(f"{path}: not a regular file" if path.exists() else f"{path}: file not found")
        settings = self.settings
        source = "given"
        if mpp is None:
            mpp = image_resolution(path) if path.suffix.lower() in IMAGE_SUFFIXES else None
            source = "file"
            if mpp is None:
                raise InputError(f"{path}: the image records no resolution: give its µm/px with --mpp (e.g. --mpp 0.5)")
        if not (0 < mpp <= 100):
            raise InputError(f"--mpp must be a positive µm/px (at most 100), got {mpp}")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{path}: images must be one of {', '.join(IMAGE_SUFFIXES)} (got {path.suffix or 'no extension'})")
        rgb = read_image(path)
        tiles, facts = image_tiles(rgb, mpp, settings.tiling.target_mpp, settings.tiling.tile_px, str(path.name))
        notes = []
        tissue = keep_tiles(tiles, settings.tiling)
        if tissue.any() and not tissue.all():
            notes.append(f"{int((~tissue).sum())} of {len(tiles)} tiles of the image are background (Canny rule) and were left out")
            tiles = tiles[tissue]
        elif not tissue.any():
            notes.append("no tile of the image passes the tissue rule: all of them were used")
        signature = self._models_signature(required=True)
        token = self._encode(tiles)
        return QueryToken(token, signature, {"image": path.name, "mpp": mpp, "mpp_source": source, "tiles": len(tiles), **facts},
                          None, notes)

    def _models_signature(self, required: bool) -> str | None:
        """The loaded models' signature, which must be one the archive's tiles were made with."""
        sets = tiles_repo.tile_sets(self.catalog)
        if not sets:
            if required:
                raise NotFoundError("the archive holds no tiles yet (ingest slides first)")
            return None
        try:
            signature = self._models(sets).signature("eagle")
        except Exception:
            if required:
                raise
            return None
        if signature not in {s.signature for s in sets}:
            if required:
                raise InputError(f"the loaded models give signature {signature}, but the archive's tiles were made with "
                                 f"{', '.join(s.signature for s in sets)}: load those models (--models / --weights-dir)")
            return None
        return signature

    def _models(self, sets=None):
        """The models that encode queries: the ones the archive's tiles were made with, unless --models says."""
        sets = tiles_repo.tile_sets(self.catalog) if sets is None else sets
        return self._query_models(s.signature for s in sets)

    def _encode(self, tiles: np.ndarray) -> np.ndarray:
        tokens = np.asarray(self._models().virchow2.encode(tiles), dtype=np.float32)
        return tokens.astype(np.float64).mean(axis=0).astype(np.float32)

    # -- top tiles ---------------------------------------------------------------------------------
    def _top_tiles(self, token, signature, k, per_patient, filters, query_pid, include_same_patient) -> list[PatientRegions]:
        """The grouped, named hits; all under one read section of the catalog's lock: the loaded index's
        tile ids and patients, the searches, the grouping and the naming see one generation (the writer
        changes them in place under the exclusive side), so no hit names a tile removed meanwhile."""
        with self.catalog.reading():
            return self._top_tiles_read(token, signature, k, per_patient, filters, query_pid, include_same_patient)

    def _top_tiles_read(self, token, signature, k, per_patient, filters, query_pid, include_same_patient) -> list[PatientRegions]:
        from eagle_index.search import allowed_ids
        from eagle_index.store.tile_index import group_tiles

        query_name = self.catalog.external_ids([query_pid]).get(query_pid) if query_pid is not None else None
        excluded = self.searcher.excluded_ids(filters, query_pid, query_name)
        if query_pid is not None and not include_same_patient:
            excluded.add(int(query_pid))
        excluded_arr = np.fromiter(excluded, np.int64, len(excluded))
        allowed = allowed_ids(self.catalog, filters, self.settings.tiling.tile_um)
        loaded = self.index.get(signature)
        token = l2_normalized(np.asarray(token, np.float32).reshape(1, -1))[0]
        if allowed is not None:
            allowed_arr = np.setdiff1d(np.fromiter(allowed, np.int64, len(allowed)), excluded_arr)

            def accept(pids):
                return np.isin(pids, allowed_arr)

            n_accept = int(accept(loaded.patients).sum())
            if n_accept <= EXACT_TILE_LIMIT:
                tids = loaded.ids[accept(loaded.patients)]
                groups = self._exact(signature, token, tids, k, per_patient, filters.min_score) if len(tids) else []
                return self._hits(groups)
        else:
            def accept(pids):
                return ~np.isin(pids, excluded_arr)

            n_accept = int(accept(loaded.patients).sum()) if len(excluded_arr) else loaded.ntotal
        total = loaded.ntotal
        if n_accept == 0:
            return []
        want = min(total, max(4 * k, math.ceil(4 * k * total / n_accept)) + 8)
        while True:
            tids, scores, pids = self.index.search(signature, token, want)
            groups = group_tiles(tids, scores, pids, k, per_patient, accept, filters.min_score)
            taken = sum(len(g[2]) for g in groups)
            floor_passed = filters.min_score is not None and len(scores) and float(scores.min()) < filters.min_score
            if taken >= k or floor_passed or want >= total:
                return self._hits(groups)
            if len(tids) < want:  # an approximate index ran dry: score the accepted tiles exactly
                log.info("approximate tile index ran dry before %d tiles: scoring exactly", k)
                return self._hits(self._exact(signature, token, loaded.ids[accept(loaded.patients)], k, per_patient, filters.min_score))
            want = min(total, want * 4)

    def _exact(self, signature, token, tids: np.ndarray, k, per_patient, min_score):
        from eagle_index.store.tile_index import group_tiles

        all_ids, all_scores, all_pids = [], [], []
        for start in range(0, len(tids), 20_000):
            ids, pids, raw = tiles_repo.load_tokens(self.catalog, signature, tids[start:start + 20_000])
            if len(ids):
                all_ids.append(ids)
                all_pids.append(pids)
                all_scores.append((l2_normalized(raw) @ token).astype(np.float32))
        if not all_ids:
            return []
        return group_tiles(np.concatenate(all_ids), np.concatenate(all_scores), np.concatenate(all_pids), k, per_patient,
                           None, min_score)

    def _hits(self, groups) -> list[PatientRegions]:
        from eagle_index.store.annotations_repo import slide_mpps

        rows = tiles_repo.tile_rows(self.catalog, [tid for _, _, tiles in groups for tid, _ in tiles])
        labels = self.catalog.labels_of([pid for pid, _, _ in groups])
        names = self.catalog.external_ids([pid for pid, _, _ in groups])
        mpps = slide_mpps(self.catalog, [r.slide_id for r in rows.values()])
        tile_um = self.settings.tiling.tile_um
        out = []
        for pid, best, tiles in groups:
            hits = [replace(rows[t], score=float(s), id=None, patient_id=None, patient=None).in_pixels(mpps.get(rows[t].slide_id), tile_um)
                    for t, s in tiles]  # what a hit shows (Tile.hit_dict), the same here and through the API
            out.append(PatientRegions(names[pid], float(best), hits, labels.get(pid, {})))
        return out


def _row_facts(row) -> dict:
    return {"slide": row.slide, "slide_id": row.slide_id, "x_um": row.x_um, "y_um": row.y_um, "patient_rank": row.patient_rank,
            "attention": row.attention}

