"""Storing embedded slides with a short writer section (issue 19: the owner keeps up).

The catalog has one writer (`Catalog.write`), and while it holds the exclusive lock no search
runs. So the slow half of storing a result runs before the write, on the caller's thread:

1. `prepare`: the slide's artifact is written (atomically); the batch's patients' embedded
   slides are read from the catalog (one plain read per batch); their artifacts are read and the patient is
   re-aggregated (`aggregate`, bit-identical to `pipeline.aggregate_patient`) over the slide set
   the commit will produce: the stored slides (less the ones the results replace) and the new
   ones, in the catalog's order (slide name, then id). The new slides are aggregated from `artifacts.as_stored(result)`, the
   exact values their artifacts hold, so nothing differs from reading them back.
2. `commit` (inside `catalog.write`): slide rows are upserted, the patient's done slides are
   read again and compared with the set that was aggregated. The same: the prepared vectors
   and tile rows are written. Different (another write stored or removed one of the patient's
   slides since step 1): the patient is re-aggregated there from its artifacts, as before
   (`steps.reaggregate_patient`), so the result is right either way. Jobs are marked `done`
   in the same transaction; several results are one transaction and one `put_vectors` per
   vector set (one FAISS update and index save per batch, not per slide).

`store_results` does both and, in this process, holds a lock per patient from step 1 to the
commit, so two results of one patient stored from two threads do not both aggregate without
the other (the second waits, then sees the first); the re-check covers any other writer.
Artifacts are still written before the catalog rows that point to them commit.
"""

from __future__ import annotations

import logging
import threading
import weakref
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eagle_index import pipeline
from eagle_index.identifiers import check_identifier
from eagle_index.ingest.steps import (IngestContext, Identity, SlideJob, reaggregate_patient, settle_patients, supersede_paths,
                                     write_artifact)
from eagle_index.store.artifacts import as_stored, read_slide_artifact

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

LOCK_STRIPES = 64


@dataclass(frozen=True)
class StoreItem:
    """One embedded slide to store: its job, fingerprint and result, and who signs its vectors.

    `target`: its artifact when already written (else `prepare` writes it); `job_id`: a queued
    job to mark done in the same transaction, after `seconds`."""

    job: SlideJob
    fingerprint: str
    result: pipeline.SlideResult
    identity: Identity | None = None
    target: Path | None = None
    job_id: int | None = None
    seconds: float = 0.0


@dataclass
class PatientPlan:
    """One patient of a batch, prepared outside the writer."""

    patient: str
    items: list[StoreItem]
    targets: list[Path] = field(default_factory=list)
    sizes: list[int | None] = field(default_factory=list)
    identity: Identity | None = None
    slides: tuple[tuple[str, str], ...] = ()  # (fingerprint, artifact path) the commit must find, in catalog order
    candidates: list = field(default_factory=list)  # SlideCandidates, aligned with `slides`
    vectors: pipeline.PatientVectors | None = None
    error: BaseException | None = None


@dataclass
class Prepared:
    plans: list[PatientPlan]
    order: list[tuple[int, int]]  # item i of the batch -> (plan, position in the plan)


# -- step 1: outside the writer --------------------------------------------------------------
def prepare(ctx: IngestContext, items: list[StoreItem]) -> Prepared:
    """Artifacts, the patients' slide sets and their aggregated vectors; nothing is committed.

    An error of one patient (an unreadable artifact) is kept in its plan: its items fail, the
    other patients of the batch are stored."""
    position: dict[str, int] = {}
    plans: list[PatientPlan] = []
    order: list[tuple[int, int]] = []
    for item in items:
        p = position.setdefault(str(item.job.patient).strip(), len(plans))
        if p == len(plans):
            plans.append(PatientPlan(str(item.job.patient).strip(), []))
        order.append((p, len(plans[p].items)))
        plans[p].items.append(item)
    for plan in plans:  # artifacts first: they exist before any row points to them
        try:
            _write_artifacts(ctx, plan)
        except Exception as exc:  # noqa: BLE001 - handed to the caller per item
            plan.error = exc
    live = [plan for plan in plans if plan.error is None]
    try:
        stored, known = _slide_sets(ctx, live)
    except Exception as exc:  # noqa: BLE001 - the catalog could not be read: every patient fails
        for plan in live:
            plan.error = exc
        live = []
    held = held_paths([item for plan in live for item in plan.items])  # as the commit will see them
    for plan in live:
        try:
            _aggregate_plan(ctx, plan, stored.get(plan.patient, []), known, held)
        except Exception as exc:  # noqa: BLE001 - handed to the caller per item
            plan.error = exc
    return Prepared(plans, order)


def _write_artifacts(ctx: IngestContext, plan: PatientPlan) -> None:
    from eagle_index.ingest.steps import _size

    files = ", ".join(dict.fromkeys(str(item.job.path) for item in plan.items))
    plan.patient = check_identifier("patient id", plan.patient, where=files)  # the identifier rule; names the file(s)
    plan.identity = next((i.identity for i in reversed(plan.items) if i.identity is not None), None) or ctx.models
    for item in plan.items:
        plan.targets.append(item.target if item.target is not None else write_artifact(ctx, item.fingerprint, item.result, item.identity))
        plan.sizes.append(_size(item.job.path))


def _slide_sets(ctx: IngestContext, plans: list[PatientPlan]) -> tuple[dict[str, list[tuple]], dict[str, int]]:
    """One read for the whole batch: each patient's embedded slides now (id, fingerprint, name,
    artifact, path), and the ids of the batch's fingerprints already in the catalog."""
    from sqlalchemy import select

    from eagle_index.store.models import Patient, Slide

    if not plans:
        return {}, {}
    stored: dict[str, list[tuple]] = {}
    with ctx.catalog.transaction() as session:
        pids = dict(session.execute(select(Patient.id, Patient.external_id).where(
            Patient.external_id.in_([plan.patient for plan in plans]))).all())
        if pids:
            for row in session.execute(select(Slide.patient_id, Slide.id, Slide.fingerprint, Slide.name, Slide.artifact_path,
                                              Slide.path).where(Slide.patient_id.in_(list(pids)), Slide.status == "done",
                                                                Slide.artifact_path.is_not(None))):
                stored.setdefault(pids[row.patient_id], []).append(tuple(row)[1:])
        known = dict(session.execute(select(Slide.fingerprint, Slide.id).where(
            Slide.fingerprint.in_(list({item.fingerprint for plan in plans for item in plan.items})))).all())
    return stored, known


def _aggregate_plan(ctx: IngestContext, plan: PatientPlan, stored: list[tuple], known: dict[str, int],
                    held: dict[str, str]) -> None:
    """The patient's slide set after the commit and its vectors, aggregated from the artifacts."""
    fingerprints = [item.fingerprint for item in plan.items]
    # the slide set after the commit: stored slides not replaced (same content, or other content at the
    # same path: superseded, `held_paths`), then the new ones (last result of a fingerprint, and of a path, wins)
    newest = {fp: i for i, fp in enumerate(fingerprints)}
    entries = [((name, sid, 0), fp, path, None) for sid, fp, name, path, at in stored
               if fp not in newest and at not in held]
    for i, item in enumerate(plan.items):
        if newest[item.fingerprint] != i or held[str(item.job.path)] != item.fingerprint:
            continue
        sid = known.get(item.fingerprint)
        key = (item.result.name, sid, 0) if sid is not None else (item.result.name, float("inf"), i)  # new ids come last
        entries.append((key, item.fingerprint, str(plan.targets[i]), item.result))
    entries.sort(key=lambda e: e[0])
    slides = [as_stored(result) if result is not None else read_slide_artifact(Path(path)) for _, _, path, result in entries]
    plan.slides = tuple((fp, path) for _, fp, path, _ in entries)
    plan.candidates = [s.candidates for s in slides]
    plan.vectors = aggregate(slides, ctx.settings.eagle.top_k)


def held_paths(items: list[StoreItem]) -> dict[str, str]:
    """Path -> the fingerprint it holds after these items are stored (the last item at a path wins)."""
    return {str(item.job.path): item.fingerprint for item in items}


def aggregate(slides: list[pipeline.SlideResult], top_k: int) -> pipeline.PatientVectors:
    """`pipeline.aggregate_patient`, bit for bit (tests/test_owner_store.py compares them), with the
    tile features concatenated once, straight into float64 (float32 -> float64 is exact), instead of
    concatenated in float32 and converted twice: about 40% less time for a 3-slide patient."""
    from eagle_index import aggregation

    if not slides:
        raise ValueError("a patient needs at least one slide")
    candidates = [s.candidates for s in slides]
    eagle, selection = aggregation.eagle_patient_vector(candidates, top_k)
    scores = np.concatenate([s.scores for s in slides])
    feats = np.concatenate([s.feats for s in slides], dtype=np.float64)
    chosen = [
        {"rank": rank, "slide": candidates[s].slide_name, "x_um": float(candidates[s].x_um[r]),
         "y_um": float(candidates[s].y_um[r]), "score": float(candidates[s].scores[r])}
        for rank, (s, r) in enumerate(zip(selection.slide, selection.row), start=1)
    ]
    return pipeline.PatientVectors(eagle, aggregation.attention_pooled(scores, feats), aggregation.mean_pooled(feats), chosen)


# -- step 2: the writer ------------------------------------------------------------------------
def commit(ctx: IngestContext, session: "Session", prepared: Prepared) -> list[int | BaseException]:
    """Inside `catalog.write`: rows of every prepared patient in a few statements per batch, one
    vector write per set; per item the slide id, or the error its patient met in `prepare`."""
    from sqlalchemy import select

    from eagle_index.store import tiles_repo
    from eagle_index.store.jobs import JobQueue
    from eagle_index.store.models import Slide

    top_k = ctx.settings.eagle.top_k
    live = [plan for plan in prepared.plans if plan.error is None]
    pids = _patient_ids(session, [plan.patient for plan in live])
    slide_ids = _upsert_slides(session, [(item, target, size, pids[plan.patient])
                                         for plan in live for item, target, size in zip(plan.items, plan.targets, plan.sizes)])
    left = supersede_paths(session, held_paths([item for plan in live for item in plan.items]))  # a path holds one slide
    done: dict[int, list] = {pid: [] for pid in pids.values()}  # the patients' done slides now, in catalog order
    for row in session.execute(select(Slide.patient_id, Slide.id, Slide.fingerprint, Slide.artifact_path).where(
            Slide.patient_id.in_(list(done)), Slide.status == "done", Slide.artifact_path.is_not(None))
            .order_by(Slide.patient_id, Slide.name, Slide.id)):
        done[row.patient_id].append(row)
    vectors: dict[tuple[str, str], tuple[list[int], list[np.ndarray], dict]] = {}
    tiles: dict[str, list] = {}
    for plan in live:
        pid, rows = pids[plan.patient], done[pids[plan.patient]]
        if tuple((r.fingerprint, r.artifact_path) for r in rows) != plan.slides:
            log.info("patient %s changed since its results were prepared: re-aggregated in the writer", plan.patient)
            reaggregate_patient(ctx, session, pid, plan.identity)
            continue
        for kind, vector in plan.vectors.by_kind().items():
            entry = vectors.setdefault((kind, plan.identity.signature(kind)), ([], [], plan.identity.provenance(kind)))
            entry[0].append(pid)
            entry[1].append(vector.astype(np.float32))
        tiles.setdefault(plan.identity.signature("eagle"), []).append(
            (pid, [(int(r.id), cand) for r, cand in zip(rows, plan.candidates)]))
    others = left - set(pids.values())  # patients a superseded slide left, none of this batch: re-aggregated here
    settle_patients(ctx, session, others, live[0].identity if live else None)
    for signature, patients in tiles.items():
        tiles_repo.put_patients_tiles(session, signature, patients, top_k)
    for (kind, signature), (patient_ids, matrix, prov) in vectors.items():
        ctx.catalog.put_vectors(session, kind, signature, patient_ids, np.stack(matrix), source="ingest", provenance=prov)
    JobQueue.mark_many_done(session, [(item.job_id, slide_ids[item.fingerprint], item.seconds)
                                      for plan in live for item in plan.items if item.job_id is not None])
    return [plan.error if plan.error is not None else slide_ids[plan.items[i].fingerprint]
            for plan, i in ((prepared.plans[p], i) for p, i in prepared.order)]


def _patient_ids(session: "Session", patients: list[str]) -> dict[str, int]:
    """Ids of these patients (external ids, stripped), created when new."""
    from sqlalchemy import select

    from eagle_index.store.models import Patient

    wanted = list(dict.fromkeys(patients))
    found = dict(session.execute(select(Patient.external_id, Patient.id).where(Patient.external_id.in_(wanted))).all())
    new = [Patient(external_id=p) for p in wanted if p not in found]
    if new:
        session.add_all(new)
        session.flush()
        found.update({p.external_id: p.id for p in new})
    return found


def _upsert_slides(session: "Session", slides: list[tuple[StoreItem, Path, int | None, int]]) -> dict[str, int]:
    """`Catalog.upsert_slide` for several (item, artifact, file size, patient id): one read and one
    flush; fingerprint -> slide id (a fingerprint given twice: the last one's fields)."""
    from sqlalchemy import select

    from eagle_index.store.models import Slide

    rows = {s.fingerprint: s for s in session.scalars(select(Slide).where(Slide.fingerprint.in_(list({i.fingerprint for i, *_ in slides}))))}
    for item, target, size, pid in slides:
        result = item.result
        fields = dict(patient_id=pid, name=result.name, path=str(item.job.path), format=result.format, size_bytes=size,
                      width_px=result.width_px, height_px=result.height_px, mpp=result.mpp, mpp_source=result.mpp_source,
                      n_tiles=result.n_tiles, status="done", error=None, artifact_path=str(target))
        slide = rows.get(item.fingerprint)
        if slide is None:
            slide = rows[item.fingerprint] = Slide(fingerprint=item.fingerprint, **fields)
            session.add(slide)
        else:
            for key, value in fields.items():
                setattr(slide, key, value)
    session.flush()
    return {fp: int(s.id) for fp, s in rows.items()}


# -- both, with the patients serialized in this process ---------------------------------------
_locks: "weakref.WeakKeyDictionary[object, list[threading.Lock]]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _patient_locks(catalog, patients) -> list[threading.Lock]:
    with _locks_guard:
        stripes = _locks.get(catalog)
        if stripes is None:
            stripes = _locks[catalog] = [threading.Lock() for _ in range(LOCK_STRIPES)]
    return [stripes[i] for i in sorted({hash(str(p).strip()) % LOCK_STRIPES for p in patients})]  # one order: no deadlock


def store_results(ctx: IngestContext, items: list[StoreItem], sync: bool = True) -> list[int | BaseException]:
    """Store several results in one transaction (one FAISS update per set); per item its slide id
    or the exception that kept it out (the other items are stored). An error of the transaction
    itself fails them all (raised). `sync`: reconcile the FAISS indexes after the commit."""
    if not items:
        return []
    with ExitStack() as held:
        for lock in _patient_locks(ctx.catalog, [i.job.patient for i in items]):
            held.enter_context(lock)
        prepared = prepare(ctx, items)
        if all(plan.error is not None for plan in prepared.plans):
            return commit_nothing(prepared)
        out = ctx.catalog.write(lambda session: commit(ctx, session, prepared))
    if sync:
        ctx.sync_index()
    return out


def commit_nothing(prepared: Prepared) -> list[BaseException]:
    return [prepared.plans[p].error for p, _ in prepared.order]
