"""Read-only listings for the pages and the API: patients, slides, labels, files, with filters and paging.

Reached as `service.browse` (a `Listing`): front ends never see a session or an ORM row, only
plain dicts and frozen `SlideRecord`s. Patients' ids, labels and slide names come from the
catalog's one read path (`Catalog.directory`); the rest are paged queries of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from eagle_index.errors import NotFoundError
from eagle_index.results import Page
from eagle_index.store import cohorts_repo
from eagle_index.store.models import Cohort, CohortMember, Job, Patient, Slide, Vector

SLIDE_STATES = ("registered", "done", "failed")


@dataclass(frozen=True)
class SlideRecord:
    """A slide row as plain values (what the pages, thumbnails and tile images need)."""

    id: int
    patient_id: int
    name: str
    fingerprint: str
    path: str | None
    format: str | None
    size_bytes: int | None
    width_px: int | None
    height_px: int | None
    mpp: float | None
    mpp_source: str | None
    n_tiles: int | None
    status: str
    error: str | None
    artifact_path: str | None
    created_at: datetime | None

    @classmethod
    def of(cls, row: Slide) -> "SlideRecord":
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"



def slide_dict(row: SlideRecord, external_id: str | None = None) -> dict:
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
    return out  # ids only: the web layer adds the thumbnail's URL (web/urls.py)


class Listing:
    """The listings bound to one catalog: what `service.browse` answers."""

    SLIDE_STATES = SLIDE_STATES
    slide_dict = staticmethod(slide_dict)

    def __init__(self, catalog):
        self.catalog = catalog

    # -- patients ---------------------------------------------------------------------------------
    def list_patients(self, q: str | None = None, allowed: set[int] | None = None, kind: str | None = None,
                      limit: int = 50, offset: int = 0) -> Page:
        """A page of patients (items: patient, slides, labels, vectors) whose id contains `q` (case-insensitive; prefix matches first),
        within `allowed` ids (label/cohort filters), with a vector of `kind` when given."""
        query = select(Patient.id, Patient.external_id)
        if q:
            query = query.where(func.lower(Patient.external_id).like(_like(q), escape="\\"))
        if allowed is not None:
            if not allowed:
                return Page(0, limit, offset, ())
            query = query.where(Patient.id.in_(sorted(allowed)))
        if kind:
            query = query.where(Patient.id.in_(select(Vector.patient_id).where(Vector.kind == kind)))
        with self.catalog.transaction() as session:
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
        labels = self.catalog.labels_of(ids)
        items = tuple({"patient": ext, "slides": int(slide_counts.get(pid, 0)), "labels": labels[pid], "vectors": sorted(kinds[pid])}
                      for pid, ext in rows)
        return Page(int(total or 0), limit, offset, items)

    def patient_id(self, external_id: str) -> int:
        ids = self.catalog.patient_ids([external_id])
        if external_id not in ids:
            raise NotFoundError(f"unknown patient {external_id!r}")
        return ids[external_id]

    def labels_of(self, patient_ids) -> dict[int, dict]:
        return self.catalog.labels_of(patient_ids)

    def vectors_of(self, patient_id: int) -> list[dict]:
        with self.catalog.transaction() as session:
            rows = session.execute(select(Vector.kind, Vector.signature, Vector.dim, Vector.source)
                                   .where(Vector.patient_id == patient_id).order_by(Vector.kind, Vector.signature)).all()
        return [{"kind": k, "signature": s, "dim": d, "source": src} for k, s, d, src in rows]

    def cohorts_of(self, patient_id: int) -> list[str]:
        with self.catalog.transaction() as session:
            return list(session.scalars(select(Cohort.name).join(CohortMember, CohortMember.cohort_id == Cohort.id)
                                        .where(CohortMember.patient_id == patient_id).order_by(Cohort.name)))

    def label_summary(self) -> list[dict]:
        """Every label name with its values and how many patients have each."""
        out: dict[str, dict] = {}
        for labels in self.catalog.directory().labels.values():
            for name, value in labels.items():
                entry = out.setdefault(name, {"name": name, "patients": 0, "values": {}})
                entry["patients"] += 1
                if value is not None:
                    entry["values"][str(value)] = entry["values"].get(str(value), 0) + 1
        return [{**out[n], "values": dict(sorted(out[n]["values"].items()))} for n in sorted(out)]

    # -- slides -----------------------------------------------------------------------------------
    def slides_of_patient(self, patient_id: int, superseded: bool = True) -> list[SlideRecord]:
        """A patient's slide rows by name; `superseded=False` leaves out those whose path now holds other content."""
        query = select(Slide).where(Slide.patient_id == patient_id)
        if not superseded:
            query = query.where(Slide.status != "superseded")
        with self.catalog.transaction() as session:
            return [SlideRecord.of(r) for r in session.scalars(query.order_by(Slide.name, Slide.id))]

    def slide(self, slide_id: int) -> tuple[SlideRecord, str]:
        """(the slide row, its patient's external id); NotFoundError for an unknown id."""
        with self.catalog.transaction() as session:
            row = session.get(Slide, int(slide_id))
            if row is None:
                raise NotFoundError(f"unknown slide id {slide_id}")
            record = SlideRecord.of(row)
        return record, self.catalog.external_ids([record.patient_id])[record.patient_id]

    def list_slides(self, patient_id: int | None = None, status: str | None = None, q: str | None = None,
                    limit: int = 50, offset: int = 0) -> Page:
        """A page of slides (items: `slide_dict`), by name."""
        query = select(Slide, Patient.external_id).join(Patient, Patient.id == Slide.patient_id)
        if patient_id is not None:
            query = query.where(Slide.patient_id == patient_id)
        if status:
            query = query.where(Slide.status == status)
        if q:
            query = query.where(func.lower(Slide.name).like(_like(q), escape="\\"))
        with self.catalog.transaction() as session:
            total = session.scalar(select(func.count()).select_from(query.with_only_columns(Slide.id).subquery()))
            rows = session.execute(query.order_by(Slide.name, Slide.id).limit(limit).offset(offset)).all()
            items = tuple(slide_dict(SlideRecord.of(slide), ext) for slide, ext in rows)
        return Page(int(total or 0), limit, offset, items)

    def artifact_paths(self, patient_id: int) -> list[str]:
        return self.catalog.artifact_paths(patient_id)

    def done_slide_ids(self, patient_id: int) -> dict[str, int]:
        return self.catalog.done_slide_ids(patient_id)

    def with_slide_files(self, external_ids) -> set[str]:
        """Which of these patients have at least one slide file readable on this machine."""
        ids = self.catalog.patient_ids(list(external_ids))
        files = cohorts_repo.slide_files(self.catalog, list(ids.values()))
        return {ext for ext, pid in ids.items() if any(p and Path(p).is_file() for _, p in files.get(pid, []))}

    # -- jobs -------------------------------------------------------------------------------------
    def job_state(self, job_id: int) -> str | None:
        with self.catalog.transaction() as session:
            return session.scalar(select(Job.state).where(Job.id == int(job_id)))
