"""SQL of the annotations (revision 0006): regions drawn on slides, QuPath GeoJSON geometry in level-0 px.

Identity. A row names its slide by (patient id, slide name), not by slide row: re-ingesting a
slide keeps its row anyway, and when new content stored at a slide's path supersedes it (a new
slide row of the same patient and name, issue 24) the annotations stay with the new row. They
are removed with the slide (`remove_for_slides`, called by `Catalog.delete_slides`) once no
slide row of that patient and name is left, and with the patient (`remove_for_patients`).

Bounding boxes are stored in pixels and, when the slide records its µm/px, in µm, so a query
can filter by region without parsing geometry. Writes run inside the caller's transaction
(`Catalog.write`); reads open their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from eagle_index.errors import NotFoundError
from eagle_index.formats import geojson
from eagle_index.store.models import Annotation, Patient, Slide, annotation_id_seq, utcnow


@dataclass(frozen=True)
class AnnotationRow:
    id: int
    patient_id: int
    patient: str
    slide: str
    slide_id: int | None
    name: str | None
    class_name: str | None
    color: str | None
    shape: str
    geometry: dict
    properties_json: str | None  # the feature's properties as imported (parsed only for an export)
    feature_id: str | None
    source: str | None
    bbox_px: tuple[float, float, float, float]
    bbox_um: tuple[float, float, float, float] | None
    created_at: str
    updated_at: str

    def as_dict(self) -> dict:
        """The API's annotation object."""
        return {"id": self.id, "slide": self.slide, "slide_id": self.slide_id, "patient": self.patient, "name": self.name,
                "class_name": self.class_name, "color": self.color, "shape": self.shape, "geometry": self.geometry,
                "bbox_px": list(self.bbox_px), "bbox_um": list(self.bbox_um) if self.bbox_um else None,
                "source": self.source, "created_at": self.created_at, "updated_at": self.updated_at}

    @property
    def properties(self) -> dict | None:
        return json.loads(self.properties_json) if self.properties_json is not None else None

    def feature(self) -> dict:
        """This annotation as a QuPath GeoJSON Feature (properties as imported, with its current name, class, colour)."""
        props = geojson.export_properties(self.properties, self.name, self.class_name, self.color)
        return geojson.feature(self.geometry, props, self.feature_id)


def _iso(value) -> str:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else ""


def _row(a, patient: str) -> AnnotationRow:
    """An AnnotationRow from an ORM row or a Core row of the table's columns."""
    um = (a.x0_um, a.y0_um, a.x1_um, a.y1_um)
    return AnnotationRow(int(a.id), int(a.patient_id), patient, a.slide_name, a.slide_id, a.name, a.class_name, a.color, a.shape,
                         json.loads(a.geometry), a.properties, a.feature_id,
                         a.source, (a.x0_px, a.y0_px, a.x1_px, a.y1_px), um if None not in um else None,
                         _iso(a.created_at), _iso(a.updated_at))


def _set_geometry(a: Annotation, geometry: dict, shape: str, mpp: float | None) -> None:
    x0, y0, x1, y1 = geojson.bbox(geometry)
    a.geometry = json.dumps(geometry, separators=(",", ":"))
    a.shape = shape
    a.x0_px, a.y0_px, a.x1_px, a.y1_px = x0, y0, x1, y1
    if mpp:
        a.x0_um, a.y0_um, a.x1_um, a.y1_um = x0 * mpp, y0 * mpp, x1 * mpp, y1 * mpp
    else:
        a.x0_um = a.y0_um = a.x1_um = a.y1_um = None


# -- writes (inside Catalog.write) -------------------------------------------------------------
def add(session: Session, patient_id: int, slide_name: str, slide_id: int | None, mpp: float | None,
        features: list[geojson.ParsedFeature], source: str | None) -> list[int]:
    """Store checked features as annotations of one slide; their ids, in the features' order.
    One statement for the ids and one INSERT for the rows, whatever their number (a QuPath file of
    10,000 annotations is one write, not 10,000 ORM flushes)."""
    if not features:
        return []
    ids = sorted(int(i) for i in session.scalars(select(annotation_id_seq.next_value()).select_from(func.range(len(features)))))
    now = utcnow()
    rows = []
    for new_id, f in zip(ids, features):
        x0, y0, x1, y1 = geojson.bbox(f.geometry)
        rows.append(dict(
            id=new_id, patient_id=int(patient_id), slide_name=slide_name, slide_id=slide_id, name=f.name, class_name=f.class_name,
            color=f.color, shape=f.shape, geometry=json.dumps(f.geometry, separators=(",", ":")),
            properties=json.dumps(f.properties) if f.properties is not None else None, feature_id=f.feature_id, source=source,
            x0_px=x0, y0_px=y0, x1_px=x1, y1_px=y1, x0_um=x0 * mpp if mpp else None, y0_um=y0 * mpp if mpp else None,
            x1_um=x1 * mpp if mpp else None, y1_um=y1 * mpp if mpp else None, created_at=now, updated_at=now))
    _insert(session, rows)
    return ids


def _insert(session: Session, rows: list[dict]) -> None:
    """INSERT the rows in one statement from an Arrow table DuckDB reads in place: an executemany costs DuckDB
    milliseconds a row (10,000 annotations: tens of seconds; this way well under a second)."""
    import pyarrow as pa

    columns = [c.name for c in Annotation.__table__.c]
    table = pa.Table.from_pylist(rows, schema=_arrow_schema())
    raw = session.connection().connection.driver_connection
    name = f"annotation_rows_{id(table)}"
    raw.register(name, table)
    try:
        session.connection().exec_driver_sql(f"INSERT INTO annotations ({', '.join(columns)}) SELECT {', '.join(columns)} FROM {name}")
    finally:
        raw.unregister(name)


def _arrow_schema():
    import pyarrow as pa

    kinds = {"INTEGER": pa.int64(), "FLOAT": pa.float64(), "DATETIME": pa.timestamp("us")}
    return pa.schema([(c.name, kinds.get(str(c.type), pa.string())) for c in Annotation.__table__.c])


UNSET = object()


def update(session: Session, annotation_id: int, mpp: float | None, name=UNSET, class_name=UNSET, color=UNSET,
           geometry=UNSET, shape: str | None = None) -> None:
    a = session.get(Annotation, int(annotation_id))
    if a is None:
        raise NotFoundError(f"unknown annotation id {annotation_id}")
    if name is not UNSET:
        a.name = name
    if class_name is not UNSET:
        a.class_name = class_name
    if color is not UNSET:
        a.color = color
    if geometry is not UNSET:
        _set_geometry(a, geometry, shape, mpp)
    a.updated_at = utcnow()
    session.flush()


def delete_ids(session: Session, ids: list[int]) -> list[int]:
    """Delete annotations by id; every id must exist (else NotFoundError naming the unknown ones, nothing deleted)."""
    ids = [int(i) for i in ids]
    found = set(session.scalars(select(Annotation.id).where(Annotation.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFoundError(f"unknown annotation id{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}")
    session.execute(delete(Annotation).where(Annotation.id.in_(ids)))
    return ids


def remove_for_slides(session: Session, slide_ids: list[int]) -> int:
    """Before these slide rows are deleted: drop the annotations of every (patient, slide name) that no
    other slide row keeps. Returns annotations removed."""
    ids = [int(i) for i in slide_ids]
    if not ids:
        return 0
    gone = set(session.execute(select(Slide.patient_id, Slide.name).where(Slide.id.in_(ids))).all())
    kept = set(session.execute(select(Slide.patient_id, Slide.name).where(Slide.id.not_in(ids))).all()) if gone else set()
    removed = 0
    for pid, name in gone - kept:
        removed += session.execute(delete(Annotation).where(Annotation.patient_id == pid, Annotation.slide_name == name)).rowcount or 0
    return removed


def remove_for_patients(session: Session, patient_ids: list[int]) -> int:
    ids = [int(i) for i in patient_ids]
    if not ids:
        return 0
    return session.execute(delete(Annotation).where(Annotation.patient_id.in_(ids))).rowcount or 0


# -- reads ------------------------------------------------------------------------------------------
def _select():
    """The table's columns (Core rows, not ORM objects: thousands of annotations read fast) and the patient's id."""
    return select(*Annotation.__table__.c, Patient.external_id).join(Patient, Patient.id == Annotation.patient_id)


def _rows(session: Session, query) -> list[AnnotationRow]:
    return [_row(r, r.external_id) for r in session.execute(query).all()]


def of_slide(catalog, patient_id: int, slide_name: str) -> list[AnnotationRow]:
    with catalog.transaction() as session:
        return _rows(session, _select().where(Annotation.patient_id == int(patient_id), Annotation.slide_name == slide_name)
                     .order_by(Annotation.id))


def of_ids(catalog, ids) -> list[AnnotationRow]:
    ids = [int(i) for i in ids]
    with catalog.transaction() as session:
        found = {r.id: r for r in _rows(session, _select().where(Annotation.id.in_(ids)))}
    return [found[i] for i in ids if i in found]


def get(catalog, annotation_id: int) -> AnnotationRow:
    with catalog.transaction() as session:
        rows = _rows(session, _select().where(Annotation.id == int(annotation_id)))
    if not rows:
        raise NotFoundError(f"unknown annotation id {annotation_id}")
    return rows[0]


def listing(catalog, patient_id: int | None = None, slide_name: str | None = None, limit: int | None = None) -> list[AnnotationRow]:
    query = _select().order_by(Annotation.id)
    if patient_id is not None:
        query = query.where(Annotation.patient_id == int(patient_id))
    if slide_name is not None:
        query = query.where(Annotation.slide_name == slide_name)
    if limit is not None:
        query = query.limit(int(limit))
    with catalog.transaction() as session:
        return _rows(session, query)


def class_names(catalog) -> list[str]:
    with catalog.transaction() as session:
        return sorted(session.scalars(select(Annotation.class_name).distinct().where(Annotation.class_name.is_not(None))))


def slide_mpps(catalog, slide_ids) -> dict[int, float | None]:
    ids = sorted({int(i) for i in slide_ids})
    if not ids:
        return {}
    with catalog.transaction() as session:
        return {int(i): m for i, m in session.execute(select(Slide.id, Slide.mpp).where(Slide.id.in_(ids)))}


def patients_in_annotations(catalog, classes, tile_um: float) -> set[int]:
    """Patients with at least one selected tile (patient rank set) whose centre lies inside an area
    annotation of one of `classes` (names matched case-insensitively) on that tile's slide.
    A class no annotation has: NotFoundError naming it and the classes there are."""
    wanted = sorted({str(c).strip().lower() for c in classes if str(c).strip()})
    rows = catalog.read_rows  # plain SQL (store/catalog_reads.py): a CLI search reads through a snapshot too
    marks = ",".join("?" * len(wanted)) or "NULL"
    found = rows(f"SELECT patient_id, slide_name, geometry, lower(class_name) FROM annotations "
                 f"WHERE lower(class_name) IN ({marks})", tuple(wanted))
    missing = set(wanted) - {c for *_, c in found}
    if missing:
        known = sorted(r[0] for r in rows("SELECT DISTINCT class_name FROM annotations WHERE class_name IS NOT NULL"))
        raise NotFoundError(f"no annotations of class {', '.join(repr(m) for m in sorted(missing))} "
                            f"(annotation classes: {', '.join(known) or 'none yet'})")
    by_slide: dict[tuple[int, str], list[dict]] = {}
    for pid, name, geometry, _ in found:
        geom = json.loads(geometry)
        if geom["type"] in geojson.AREA_TYPES:
            by_slide.setdefault((int(pid), name), []).append(geom)
    out: set[int] = set()
    for (pid, name), geometries in by_slide.items():
        slides = rows("SELECT id, mpp FROM slides WHERE patient_id = ? AND name = ? AND status <> 'superseded'", (pid, name))
        for slide_id, mpp in slides:
            if not mpp:
                continue
            tiles = rows("SELECT x_um, y_um FROM tile_tokens WHERE slide_id = ? AND patient_rank IS NOT NULL", (int(slide_id),))
            if not tiles:
                continue
            xs = [(x + tile_um / 2) / mpp for x, _ in tiles]
            ys = [(y + tile_um / 2) / mpp for _, y in tiles]
            if any(geojson.contains(g, xs, ys).any() for g in geometries):
                out.add(pid)
                break
    return out
