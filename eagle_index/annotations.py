"""Annotations: regions drawn on slides (QuPath GeoJSON in and out, the viewer), reached as `service.annotations`.

Slides are named as everywhere else: by slide name, or by slide id (digits that name no slide).
A name several patients' slides share is an error asking for the id. Geometry is GeoJSON in the
slide's level-0 pixels (`eagle_index/formats/geojson.py`); storage in
`eagle_index/store/annotations_repo.py` (kept across re-ingest, removed with the slide).
Every method returns plain JSON values (the API's annotation objects, a FeatureCollection).
"""

from __future__ import annotations

from pathlib import Path

from eagle_index.errors import InputError, NotFoundError
from eagle_index.formats import geojson
from eagle_index.store import annotations_repo as repo
from eagle_index.store import tiles_repo

MAX_TEXT = 200  # name and class name length


class AnnotationService:
    def __init__(self, catalog):
        self.catalog = catalog

    # -- slides ---------------------------------------------------------------------------------
    def slide(self, slide):
        """The slide a name or id means (tiles_repo.SlideInfo): its current row (done before others, superseded last)."""
        if slide is None or str(slide).strip() == "":
            raise InputError("a slide name (or id) is required")
        text = str(slide).strip()
        found = tiles_repo.slides_named(self.catalog, text)
        if not found and text.isdigit():
            return tiles_repo.slide_info(self.catalog, int(text))
        if not found:
            raise NotFoundError(f"unknown slide {text!r}")
        if len({s.patient_id for s in found}) > 1:
            raise InputError(f"slide name {text!r} matches slides of {len({s.patient_id for s in found})} patients "
                             f"({', '.join(sorted({s.patient for s in found}))}): give the slide id "
                             f"({', '.join(str(s.id) for s in found)})")
        order = {"done": 0, "imported": 1, "superseded": 3}
        return min(found, key=lambda s: (order.get(s.status, 2), -s.id))

    def slide_of(self, row):
        """The current slide row (tiles_repo.SlideInfo) of an annotation's slide (its patient and slide name)."""
        rows = [s for s in tiles_repo.slides_named(self.catalog, row.slide) if s.patient_id == row.patient_id]
        if not rows:
            raise NotFoundError(f"annotation {row.id}: its slide {row.slide!r} is no longer in the catalog")
        order = {"done": 0, "imported": 1, "superseded": 3}
        return min(rows, key=lambda s: (order.get(s.status, 2), -s.id))

    def _current_mpp(self, patient_id: int, slide_name: str) -> float | None:
        rows = [s for s in tiles_repo.slides_named(self.catalog, slide_name) if s.patient_id == patient_id]
        order = {"done": 0, "imported": 1, "superseded": 3}
        rows.sort(key=lambda s: (order.get(s.status, 2), -s.id))
        return next((s.mpp for s in rows if s.mpp), None)

    # -- reads ------------------------------------------------------------------------------------
    def of_slide(self, slide) -> dict:
        info = self.slide(slide)
        rows = repo.of_slide(self.catalog, info.patient_id, info.name)
        return {"slide": info.name, "slide_id": info.id, "patient": info.patient, "annotations": [r.as_dict() for r in rows]}

    def list(self, slide=None, limit: int | None = None) -> list[dict]:
        """Annotations of one slide, or of every slide (by id)."""
        if slide is None:
            return [r.as_dict() for r in repo.listing(self.catalog, limit=limit)]
        info = self.slide(slide)
        return [r.as_dict() for r in repo.listing(self.catalog, info.patient_id, info.name, limit)]

    def get(self, annotation_id) -> dict:
        return repo.get(self.catalog, _id(annotation_id)).as_dict()

    def find(self, slide, name_or_id):
        """An annotation of a slide by name (exact) or id (repo.AnnotationRow)."""
        info = self.slide(slide)
        rows = repo.of_slide(self.catalog, info.patient_id, info.name)
        text = str(name_or_id).strip()
        named = [r for r in rows if r.name == text]
        if len(named) > 1:
            raise InputError(f"{len(named)} annotations of slide {info.name!r} are named {text!r}: give the id "
                             f"({', '.join(str(r.id) for r in named)})")
        if named:
            return named[0]
        if text.isdigit():
            for r in rows:
                if r.id == int(text):
                    return r
            try:
                other = repo.get(self.catalog, int(text))
            except NotFoundError:
                other = None
            if other is not None:
                raise InputError(f"annotation {text} belongs to slide {other.slide!r}, not {info.name!r}")
        names = sorted({r.name for r in rows if r.name})
        raise NotFoundError(f"slide {info.name!r} has no annotation {text!r} "
                            + (f"(names: {', '.join(names[:20])}{' …' if len(names) > 20 else ''})" if names
                               else f"({len(rows)} annotations, none named)" if rows else "(it has no annotations)"))

    def class_names(self) -> list[str]:
        return repo.class_names(self.catalog)

    # -- writes -------------------------------------------------------------------------------------
    def create(self, slide, geometry, name: str | None = None, class_name: str | None = None, color=None,
               source: str = "viewer") -> dict:
        """One annotation drawn on a slide (geometry: GeoJSON in level-0 px)."""
        info = self.slide(slide)
        shape = geojson.check_geometry(geometry, "geometry")
        parsed = geojson.ParsedFeature(0, geometry, shape, _text(name, "name"), _text(class_name, "class_name"),
                                       geojson.normalize_color(color), None, None)
        mpp = self._current_mpp(info.patient_id, info.name)
        (new_id,) = self.catalog.write(lambda s: repo.add(s, info.patient_id, info.name, info.id, mpp, [parsed], _text(source, "source")))
        return repo.get(self.catalog, new_id).as_dict()

    def update(self, annotation_id, **fields) -> dict:
        """Change any of name, class_name, color, geometry (None clears name, class, colour)."""
        unknown = set(fields) - {"name", "class_name", "color", "geometry"}
        if unknown:
            raise InputError(f"unknown annotation field(s): {', '.join(sorted(unknown))} (name, class_name, color, geometry)")
        if not fields:
            raise InputError("nothing to change: give name, class_name, color or geometry")
        current = repo.get(self.catalog, _id(annotation_id))
        values = {}
        for key in ("name", "class_name"):
            if key in fields:
                values[key] = _text(fields[key], key)
        if "color" in fields:
            values["color"] = geojson.normalize_color(fields["color"])
        if "geometry" in fields:
            values["shape"] = geojson.check_geometry(fields["geometry"], "geometry")
            values["geometry"] = fields["geometry"]
        mpp = self._current_mpp(current.patient_id, current.slide)
        self.catalog.write(lambda s: repo.update(s, current.id, mpp, **values))
        return repo.get(self.catalog, current.id).as_dict()

    def delete(self, ids) -> list[int]:
        ids = [_id(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]
        if not ids:
            raise InputError("give the id(s) of the annotations to delete")
        return self.catalog.write(lambda s: repo.delete_ids(s, ids))

    # -- QuPath GeoJSON ---------------------------------------------------------------------------------
    def import_geojson(self, slide, path: Path | None = None, data=None, source: str | None = None) -> dict:
        """Import a QuPath GeoJSON file (or decoded GeoJSON `data`) onto a slide: all features or none.
        {"slide", "imported", "annotations"}."""
        if path is not None:  # the file first: a missing or malformed file is named before the slide is looked up
            features = geojson.read(Path(path))
            source = source or Path(path).name
        elif isinstance(data, (bytes, str)):
            features = geojson.loads(data, source or "GeoJSON")
        else:
            features = geojson.parse(data, source or "GeoJSON")
        if not features:
            raise InputError(f"{source or 'GeoJSON'}: holds no features")
        for f in features:
            for what, value in (("name", f.name), ("classification name", f.class_name)):
                if value is not None and len(value) > MAX_TEXT:
                    raise InputError(f"{source}: features[{f.index}]: {what} is longer than {MAX_TEXT} characters")
        info = self.slide(slide)
        # A file of search hits (`search-tiles --geojson`) holds tiles of many slides, each feature naming its own:
        # their pixels belong to those slides, so only this slide's features are imported; the others are reported.
        features, elsewhere = _split_by_slide(features, info)
        if not features:
            raise InputError(f"{source or 'GeoJSON'}: all {len(elsewhere)} features name other slides "
                             f"({', '.join(sorted({e['slide'] for e in elsewhere})[:5])}), not {info.name!r}: "
                             f"import the file onto each of those slides")
        mpp = self._current_mpp(info.patient_id, info.name)
        ids = self.catalog.write(lambda s: repo.add(s, info.patient_id, info.name, info.id, mpp, features, source))
        rows = repo.of_ids(self.catalog, ids)
        return {"slide": info.name, "slide_id": info.id, "imported": len(ids), "annotations": [r.as_dict() for r in rows],
                "skipped": elsewhere}

    def export_geojson(self, slide) -> dict:
        """The slide's annotations as a QuPath FeatureCollection (level-0 px)."""
        info = self.slide(slide)
        return geojson.feature_collection([r.feature() for r in repo.of_slide(self.catalog, info.patient_id, info.name)])


def _split_by_slide(features, info):
    """(features of this slide, [{"feature", "slide"}] of features whose properties name another slide)."""
    mine, elsewhere = [], []
    for f in features:
        named = (f.properties or {}).get("slide")
        if isinstance(named, str) and named and named != info.name:
            elsewhere.append({"feature": f.index, "slide": named})
        else:
            mine.append(f)
    return mine, elsewhere


def _id(value) -> int:
    if isinstance(value, bool):
        raise InputError(f"annotation id must be an integer, got {value!r}")
    try:
        out = int(str(value).strip())
    except (TypeError, ValueError):
        raise InputError(f"annotation id must be an integer, got {value!r}") from None
    if not 1 <= out < 2**31:
        raise InputError(f"annotation id must be a positive integer, got {value!r}")
    return out


def _text(value, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{what} must be a string, got {value!r}")
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise InputError(f"{what} is longer than {MAX_TEXT} characters")
    return value or None
