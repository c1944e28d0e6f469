"""Read-only listing queries the web pages need: patients and slides with filters and paging.

They use the catalog's session and ORM models (no writes) and return plain dicts. Candidates
to move into `eagle_index/store/` once another front end needs them.
"""

from __future__ import annotations

from sqlalchemy import func, select

from eagle_index.errors import NotFoundError
from eagle_index.store.models import Cohort, CohortMember, Label, Patient, Slide, Vector

SLIDE_STATES = ("registered", "done", "failed")


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def list_patients(catalog, q: str | None = None, allowed: set[int] | None = None, kind: str | None = None,
                  limit: int = 50, offset: int = 0) -> dict:
    """{total, items}: patients whose id contains `q` (case-insensitive; prefix matches first),
    within `allowed` ids (label/cohort filters), with a vector of `kind` when given."""
    query = select(Patient.id, Patient.external_id)
    if q:
        query = query.where(func.lower(Patient.external_id).like(_like(q), escape="\\"))
    if allowed is not None:
        if not allowed:
            return {"total": 0, "items": []}
        query = query.where(Patient.id.in_(sorted(allowed)))
    if kind:
        query = query.where(Patient.id.in_(select(Vector.patient_id).where(Vector.kind == kind)))
    with catalog.transaction() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery()))
        order = [Patient.external_id]
        if q:
            order.insert(0, func.lower(Patient.external_id).like(_like(q)[1:], escape="\\").desc())
        rows = session.execute(query.order_by(*order).limit(limit).offset(offset)).all()
        ids = [r[0] for r in rows]
        slide_counts = dict(session.execute(
            select(Slide.patient_id, func.count(Slide.id)).where(Slide.patient_id.in_(ids)).group_by(Slide.patient_id)).all())
        kinds: dict[int, list[str]] = {i: [] for i in ids}
        for pid, vkind in session.execute(select(Vector.patient_id, Vector.kind).where(Vector.patient_id.in_(ids)).distinct()):
            kinds[pid].append(vkind)
    labels = catalog.labels_of(ids)
    items = [{"patient": ext, "slides": int(slide_counts.get(pid, 0)), "labels": labels[pid], "vectors": sorted(kinds[pid])}
             for pid, ext in rows]
    return {"total": int(total or 0), "limit": limit, "offset": offset, "items": items}


def patient_row(catalog, external_id: str) -> int:
    ids = catalog.patient_ids([external_id])
    if external_id not in ids:
        raise NotFoundError(f"unknown patient {external_id!r}")
    return ids[external_id]


def slide_dict(row: Slide, external_id: str | None = None) -> dict:
    from pathlib import Path

    has_file = bool(row.path) and Path(row.path).is_file()
    out = {
        "id": row.id, "name": row.name, "patient": external_id, "status": row.status, "error": row.error,
        "format": row.format, "size_bytes": row.size_bytes, "width_px": row.width_px, "height_px": row.height_px,
        "mpp": row.mpp, "mpp_source": row.mpp_source, "n_tiles": row.n_tiles,
        "width_um": row.width_px * row.mpp if row.width_px and row.mpp else None,
        "height_um": row.height_px * row.mpp if row.height_px and row.mpp else None,
        "has_file": has_file, "has_artifact": bool(row.artifact_path),
        "created_at": row.created_at.isoformat(timespec="seconds") if row.created_at else None,
    }
    out["thumbnail_url"] = f"/api/v1/slides/{row.id}/thumbnail.png" if has_file else None
    return out


def slides_of_patient(catalog, patient_id: int) -> list[Slide]:
    with catalog.transaction() as session:
        return list(session.scalars(select(Slide).where(Slide.patient_id == patient_id).order_by(Slide.name, Slide.id)))


def slide_by_id(catalog, slide_id: int) -> tuple[Slide, str]:
    with catalog.transaction() as session:
        row = session.get(Slide, int(slide_id))
        if row is None:
            raise NotFoundError(f"unknown slide id {slide_id}")
        external = session.scalar(select(Patient.external_id).where(Patient.id == row.patient_id))
        return row, external


def list_slides(catalog, patient_id: int | None = None, status: str | None = None, q: str | None = None,
                limit: int = 50, offset: int = 0) -> dict:
    query = select(Slide, Patient.external_id).join(Patient, Patient.id == Slide.patient_id)
    if patient_id is not None:
        query = query.where(Slide.patient_id == patient_id)
    if status:
        query = query.where(Slide.status == status)
    if q:
        query = query.where(func.lower(Slide.name).like(_like(q), escape="\\"))
    with catalog.transaction() as session:
        total = session.scalar(select(func.count()).select_from(query.with_only_columns(Slide.id).subquery()))
        rows = session.execute(query.order_by(Slide.name, Slide.id).limit(limit).offset(offset)).all()
        items = [slide_dict(slide, ext) for slide, ext in rows]
    return {"total": int(total or 0), "limit": limit, "offset": offset, "items": items}


def vectors_of(catalog, patient_id: int) -> list[dict]:
    with catalog.transaction() as session:
        rows = session.execute(select(Vector.kind, Vector.signature, Vector.dim, Vector.source)
                               .where(Vector.patient_id == patient_id).order_by(Vector.kind, Vector.signature)).all()
    return [{"kind": k, "signature": s, "dim": d, "source": src} for k, s, d, src in rows]


def cohorts_of(catalog, patient_id: int) -> list[str]:
    with catalog.transaction() as session:
        return list(session.scalars(select(Cohort.name).join(CohortMember, CohortMember.cohort_id == Cohort.id)
                                    .where(CohortMember.patient_id == patient_id).order_by(Cohort.name)))


def label_summary(catalog) -> list[dict]:
    """Every label name with its values and how many patients have each."""
    with catalog.transaction() as session:
        rows = session.execute(select(Label.name, Label.value, func.count(Label.id))
                               .group_by(Label.name, Label.value).order_by(Label.name, Label.value)).all()
    out: dict[str, dict] = {}
    for name, value, count in rows:
        entry = out.setdefault(name, {"name": name, "patients": 0, "values": {}})
        entry["patients"] += int(count)
        if value is not None:
            entry["values"][str(value)] = int(count)
    return list(out.values())
