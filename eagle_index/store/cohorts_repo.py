"""SQL for search filters and cohorts: probe scores, cohorts and their members, slide files.
Patients and labels are the catalog's (`Catalog.directory`).

Functions take a `Catalog` (or a session from `Catalog.transaction()`) and return plain
values (ids, dicts, tuples), like the catalog itself, so no ORM object outlives its session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from eagle_index.errors import InputError, NotFoundError
from eagle_index.store.catalog import Catalog
from eagle_index.store.models import Cohort, CohortMember, Patient, Probe, ProbeScore, Slide, utcnow


@dataclass(frozen=True)
class CohortRow:
    id: int
    name: str
    definition: dict
    member_count: int
    materialized_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


def _row(cohort: Cohort) -> CohortRow:
    return CohortRow(cohort.id, cohort.name, json.loads(cohort.definition), int(cohort.member_count or 0),
                     cohort.materialized_at, cohort.created_at, cohort.updated_at)


# -- slides ---------------------------------------------------------------------------------
def slide_files(catalog: Catalog, patient_ids) -> dict[int, list[tuple[str, str | None]]]:
    """{patient id: [(slide name, slide path or None)]} in slide-name order."""
    ids = [int(i) for i in patient_ids]
    out: dict[int, list[tuple[str, str | None]]] = {i: [] for i in ids}
    with catalog.transaction() as session:
        rows = session.execute(select(Slide.patient_id, Slide.name, Slide.path).where(Slide.patient_id.in_(ids)).order_by(Slide.name, Slide.id))
        for pid, name, path in rows:
            out[int(pid)].append((name, path))
    return out


# -- probes ---------------------------------------------------------------------------------
def probe_probabilities(catalog: Catalog, probe_name: str) -> dict[int, float]:
    """{patient id: probability} of a probe applied to the archive; NotFoundError if no such probe."""
    with catalog.transaction() as session:
        probe_id = session.scalar(select(Probe.id).where(Probe.name == probe_name))
        if probe_id is None:
            known = session.scalars(select(Probe.name).order_by(Probe.name)).all()
            raise NotFoundError(f"unknown probe {probe_name!r} (known: {', '.join(known) or 'none'})")
        rows = session.execute(select(ProbeScore.patient_id, ProbeScore.probability).where(ProbeScore.probe_id == probe_id))
        scores = {int(pid): float(p) for pid, p in rows}
    if not scores:
        raise NotFoundError(f"probe {probe_name!r} has not been applied to the archive yet (no scores)")
    return scores


# -- cohorts --------------------------------------------------------------------------------
def _cohort(session: Session, name: str) -> Cohort:
    cohort = session.scalar(select(Cohort).where(Cohort.name == name))
    if cohort is None:
        known = session.scalars(select(Cohort.name).order_by(Cohort.name)).all()
        raise NotFoundError(f"unknown cohort {name!r} (known: {', '.join(known) or 'none'})")
    return cohort


def get_cohort(catalog: Catalog, name: str) -> CohortRow:
    with catalog.transaction() as session:
        return _row(_cohort(session, name))


def list_cohorts(catalog: Catalog) -> list[CohortRow]:
    with catalog.transaction() as session:
        return [_row(c) for c in session.scalars(select(Cohort).order_by(Cohort.name))]


def cohort_exists(catalog: Catalog, name: str) -> bool:
    with catalog.transaction() as session:
        return session.scalar(select(func.count(Cohort.id)).where(Cohort.name == name)) > 0


def save_cohort(catalog: Catalog, name: str, definition: dict, members: list[tuple[int, float | None]],
                create: bool, replace: bool = False) -> CohortRow:
    """Store a definition and its materialised members together (one transaction).

    create=True adds a new cohort (InputError if the name is taken unless replace=True);
    create=False updates an existing one (NotFoundError if absent).
    """
    now = utcnow()

    def write(session: Session) -> CohortRow:
        cohort = session.scalar(select(Cohort).where(Cohort.name == name))
        if create and cohort is not None and not replace:
            raise InputError(f"cohort {name!r} already exists (use `cohort refresh` or --replace)")
        if not create and cohort is None:
            _cohort(session, name)  # raises NotFoundError listing the known cohorts
        if cohort is None:
            cohort = Cohort(name=name, definition=json.dumps(definition, sort_keys=True), member_count=0, created_at=now)
            session.add(cohort)
            session.flush()
        else:
            session.execute(delete(CohortMember).where(CohortMember.cohort_id == cohort.id))
            cohort.definition = json.dumps(definition, sort_keys=True)
        session.add_all(CohortMember(cohort_id=cohort.id, patient_id=int(pid), score=None if score is None else float(score))
                        for pid, score in members)
        cohort.member_count = len(members)
        cohort.materialized_at = now
        cohort.updated_at = now
        session.flush()
        return _row(cohort)

    return catalog.write(write)


def delete_cohort(catalog: Catalog, name: str) -> None:
    def write(session: Session) -> None:
        cohort = _cohort(session, name)
        session.execute(delete(CohortMember).where(CohortMember.cohort_id == cohort.id))
        session.delete(cohort)

    catalog.write(write)


def cohort_members(catalog: Catalog, name: str) -> list[tuple[int, str, float | None]]:
    """(patient id, external id, score) of a cohort's materialised members, best score first, then by id."""
    with catalog.transaction() as session:
        cohort = _cohort(session, name)
        rows = session.execute(
            select(CohortMember.patient_id, Patient.external_id, CohortMember.score)
            .join(Patient, Patient.id == CohortMember.patient_id)
            .where(CohortMember.cohort_id == cohort.id)
        ).all()
    rows = [(int(pid), ext, None if score is None else float(score)) for pid, ext, score in rows]
    return sorted(rows, key=lambda r: (r[2] is None, -(r[2] or 0.0), r[1]))


