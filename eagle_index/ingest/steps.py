"""Embed slide files and store them: the steps `embed`, `ingest` and the daemon share.

`embed_files` touches no catalog. `ingest_files` writes each slide's artifact (atomically)
before the catalog rows that point to it are committed and re-aggregates the slide's patient
from all of its stored artifacts, so adding a slide never re-reads older slide files; the
re-aggregation runs before the catalog write, only the rows inside it (`ingest/storing.py`).
`store_slide` / `reaggregate_patient` do all of it inside a write (the re-check's fallback).

The steps get their collaborators explicitly: the models and settings, or an `IngestContext`
(settings, catalog, job queue, the models on demand) that `EagleService.ingest_context()`
builds. This module never imports the service; catalog writes go through `catalog.write(fn)`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from eagle_index import pipeline
from eagle_index.config import Settings
from eagle_index.errors import InputError
from eagle_index.fingerprint import slide_fingerprint
from eagle_index.formats.suffixes import SLIDE_SUFFIXES  # also imported from here by ingest.watcher
from eagle_index.formats.tables import read_slide_table
from eagle_index.results import FailedSlide, IngestedSlide, IngestReport, SkippedSlide
from eagle_index.signatures import patient_from_name
from eagle_index.store.artifacts import read_slide_artifact, write_slide_artifact

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from eagle_index.models import LoadedModels
    from eagle_index.store.catalog import Catalog
    from eagle_index.store.jobs import JobQueue

log = logging.getLogger(__name__)


class Identity(Protocol):
    """What signs and describes stored vectors: `LoadedModels`, or a worker's `ModelIdentity`."""

    def signature(self, kind: str = "eagle") -> str: ...

    def provenance(self, kind: str = "eagle") -> dict: ...


@dataclass(frozen=True)
class IngestContext:
    """The collaborators of the storing steps, built by `EagleService.ingest_context()`.

    `load_models` returns the service's models, loading them on first call: an owner whose
    Ray workers embed (and send a `ModelIdentity`) never loads them itself. `sync_index` brings
    the FAISS indexes up to the catalog after a job's commit.
    """

    settings: Settings
    catalog: "Catalog"
    jobs: "JobQueue"
    load_models: Callable[[], "LoadedModels"]
    sync_index: Callable[[], None]  # the FAISS indexes follow a commit (the service's vector store)

    @property
    def models(self) -> "LoadedModels":
        return self.load_models()


@dataclass(frozen=True)
class SlideJob:
    path: Path
    patient: str
    mpp: float | None
    source: str = "given"  # where the patient id came from: given (--patient), slide table, file name


def find_slides(paths: list[Path]) -> list[Path]:
    """Slide files named directly, or found in folders (companion files of MRXS excluded)."""
    found: list[Path] = []
    for path in (Path(os.path.abspath(p)) for p in paths):  # the catalog records absolute slide paths
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"{path}: file not found")
    return found


def plan_jobs(paths: list[Path], patient: str | None, slide_table: Path | None, mpp: float | None) -> list[SlideJob]:
    """Which patient each slide belongs to: --patient, else the slide table, else the name."""
    if patient and slide_table:
        raise InputError("give either --patient or --slide-table, not both")
    files = find_slides(paths)
    if slide_table is not None:
        rows = {row.stem: row for row in read_slide_table(slide_table)}
        jobs = []
        for path in files:
            row = rows.get(pipeline.slide_name(path))
            if row is None:
                raise InputError(f"{slide_table}: no row for slide {path.name}")
            jobs.append(SlideJob(path, row.patient, mpp or row.mpp, "slide table"))
        return jobs
    if patient:
        return [SlideJob(path, patient, mpp, "given") for path in files]
    return [SlideJob(path, patient_from_name(pipeline.slide_name(path)), mpp, "file name") for path in files]


def provenance(models, kind: str = "eagle") -> dict:
    return models.provenance(kind)


def embed_files(load_models: Callable[[], "LoadedModels"], settings: Settings, paths, patient, artifacts_dir, mpp, progress=None):
    """Embed slide files without the catalog. The paths are checked before the models load, so a
    mistyped path fails in a second rather than after loading three networks."""
    jobs = plan_jobs(paths, patient, None, mpp)
    models = load_models()
    results: dict[str, list[pipeline.SlideResult]] = {}
    started = iter(range(len(jobs)))
    announce = lambda item: _announce(progress, next(started), len(jobs), item[0])  # noqa: E731
    stream = pipeline.embed_slides(((job.path, job.mpp, None) for job in jobs), models, settings, progress=progress,
                                   on_start=announce)
    for job, (_, result) in zip(jobs, stream):  # one outcome per slide, in order
        if isinstance(result, BaseException):
            raise result  # `embed` stops at the first slide it cannot read, as before
        if artifacts_dir is not None:
            write_slide_artifact(Path(artifacts_dir) / f"{result.name}.h5", result, provenance(models))
        results.setdefault(job.patient, []).append(result)
    return {pid: pipeline.aggregate_patient(slides, settings.eagle.top_k) for pid, slides in results.items()}


def _announce(progress, index: int, total: int, path: Path) -> None:
    """Tell a progress display (if it wants to know) that slide `index` of `total` starts."""
    announce = getattr(progress, "slide", None)
    if announce is not None:
        announce(index, total, Path(path).name)


def artifact_path(settings: Settings, fingerprint: str) -> Path:
    digest = fingerprint.split(":", 1)[-1]
    return settings.artifacts_dir / digest[:2] / f"{digest}.h5"


def _patient_id_problem(job: SlideJob) -> str | None:
    """Why the job's patient id breaks the identifier rule (naming the slide file), or None."""
    from eagle_index.identifiers import check_identifier

    try:
        check_identifier("patient id", job.patient, where=str(job.path))
    except InputError as exc:
        return str(exc)
    return None


def ingest_files(ctx: IngestContext, paths, patient, slide_table, mpp, progress=None) -> IngestReport:
    from eagle_index.ingest import storing

    catalog = ctx.catalog
    jobs = plan_jobs(paths, patient, slide_table, mpp)
    ingested: list[IngestedSlide] = []
    skipped: list[SkippedSlide] = []
    failed: list[FailedSlide] = []
    touched: set[str] = set()
    todo: "collections.deque[tuple[int, SlideJob, str]]" = collections.deque()  # handed to the stream, in order
    unannounced: "collections.deque[int]" = collections.deque()  # their indexes, until each starts
    repeats: list[tuple[int, SlideJob, str]] = []  # same bytes as a slide earlier in this run
    errors: dict[str, str] = {}  # fingerprint -> why that slide failed

    def stored_as(fingerprint: str) -> str | None:
        with catalog.transaction() as session:
            existing = catalog.slide_by_fingerprint(session, fingerprint)
            return existing.name if existing is not None and existing.status == "done" else None

    def to_embed():
        """Slides to embed, fingerprinted as the stream asks for them (so the first slide starts at
        once, not after hashing the whole archive); stored ones are skipped here."""
        seen: set[str] = set()
        for index, job in enumerate(jobs):
            fingerprint = slide_fingerprint(job.path)
            name = stored_as(fingerprint)
            bad_patient = _patient_id_problem(job)
            if name is not None:
                _announce(progress, index, len(jobs), job.path)
                skipped.append(SkippedSlide(str(job.path), f"already ingested as {name}"))
            elif bad_patient is not None:  # the identifier rule: this slide fails (a failed job), the others go on
                _announce(progress, index, len(jobs), job.path)
                ctx.jobs.record_failure(fingerprint, str(job.path), job.patient, bad_patient)
                failed.append(FailedSlide(str(job.path), bad_patient))
            elif fingerprint in seen:
                repeats.append((index, job, fingerprint))
            else:
                seen.add(fingerprint)
                todo.append((index, job, fingerprint))
                unannounced.append(index)
                yield job.path, job.mpp, None

    # the next slides are read (pipeline.embed_slides, reader processes) while one is embedded and stored
    announce = lambda item: _announce(progress, unannounced.popleft(), len(jobs), item[0])  # noqa: E731
    items = to_embed()
    first = next(items, None)  # the models load only if there is a slide to embed
    stream = pipeline.embed_slides(itertools.chain([first], items), ctx.models, ctx.settings, progress=progress,
                                   on_start=announce) if first is not None else ()
    for _, result in stream:
        _, job, fingerprint = todo.popleft()  # one outcome per slide, in order
        if isinstance(result, BaseException):
            log.info("slide failed: %s", result)  # the front end reports it (once)
            ctx.jobs.record_failure(fingerprint, str(job.path), job.patient, str(result))
            failed.append(FailedSlide(str(job.path), str(result)))
            errors[fingerprint] = str(result)
            continue
        target = write_artifact(ctx, fingerprint, result)
        # the patient's re-aggregation runs before the write, only the rows inside it (ingest/storing.py)
        (outcome,) = storing.store_results(ctx, [storing.StoreItem(job, fingerprint, result, target=target)], sync=False)
        if isinstance(outcome, BaseException):
            raise outcome
        ctx.jobs.resolve_failure(fingerprint)
        touched.add(job.patient)
        ingested.append(IngestedSlide(str(job.path), job.patient, job.source, result.name, result.n_tiles, result.mpp,
                                      result.mpp_source, round(result.timings.get("total", 0.0), 3)))
    for index, job, fingerprint in repeats:  # its twin was stored (or failed) above
        _announce(progress, index, len(jobs), job.path)
        name = stored_as(fingerprint)
        if name is not None:
            skipped.append(SkippedSlide(str(job.path), f"already ingested as {name}"))
        else:
            failed.append(FailedSlide(str(job.path), errors.get(fingerprint, "its twin in this run was not stored")))
    return IngestReport(tuple(ingested), tuple(skipped), tuple(failed), tuple(sorted(touched)))


VECTOR_KINDS = ("eagle", "chief", "mean-ctranspath")  # the vectors a slide's patient gets


@dataclass(frozen=True)
class ModelIdentity:
    """What the owner needs to sign and describe vectors, without holding the models.

    A worker that loaded the models sends this to the owner (it pickles); the owner's
    `LoadedModels` offers the same two methods, so the storing code takes either.
    """

    signatures: dict
    provenances: dict

    @classmethod
    def of(cls, models) -> "ModelIdentity":
        return cls({k: models.signature(k) for k in VECTOR_KINDS}, {k: models.provenance(k) for k in VECTOR_KINDS})

    def signature(self, kind: str = "eagle") -> str:
        return self.signatures[kind]

    def provenance(self, kind: str = "eagle") -> dict:
        return self.provenances[kind]


def compute_slide(models, settings: Settings, job: SlideJob, progress=None) -> pipeline.SlideResult:
    """The pure half of ingestion (runs in a Ray worker or in the owner): slide file -> result."""
    return pipeline.embed_slide(job.path, models, settings, mpp_override=job.mpp, progress=progress)


def write_artifact(ctx: IngestContext, fingerprint: str, result: pipeline.SlideResult, identity: Identity | None = None) -> Path:
    """The slide's artifact, written atomically by the owner; nothing is committed yet."""
    return write_slide_artifact(artifact_path(ctx.settings, fingerprint), result, provenance(identity or ctx.models))


def embed_to_artifact(ctx: IngestContext, job: SlideJob, fingerprint: str, progress=None) -> tuple[pipeline.SlideResult, Path]:
    """Embed one slide and write its artifact (atomically); nothing is committed yet."""
    result = compute_slide(ctx.models, ctx.settings, job, progress)
    return result, write_artifact(ctx, fingerprint, result)


def store_slide(ctx: IngestContext, session: "Session", job: SlideJob, fingerprint: str, result: pipeline.SlideResult,
                target: Path, identity: Identity | None = None) -> int:
    """Slide row + the patient's re-aggregated vectors, inside the caller's transaction (a `catalog.write` function)."""
    catalog = ctx.catalog
    pid = catalog.patient_id(session, job.patient, create=True)
    slide_id = catalog.upsert_slide(
        session, fingerprint, patient_id=pid, name=result.name, path=str(job.path), format=result.format,
        size_bytes=_size(job.path), width_px=result.width_px, height_px=result.height_px, mpp=result.mpp,
        mpp_source=result.mpp_source, n_tiles=result.n_tiles, status="done", error=None, artifact_path=str(target),
    )
    left = supersede_paths(session, {str(job.path): fingerprint})
    reaggregate_patient(ctx, session, pid, identity)
    settle_patients(ctx, session, left - {pid}, identity)
    return slide_id


def supersede_paths(session: "Session", held: dict[str, str]) -> set[int]:
    """A path holds one slide (issue 24): `held` maps paths to the fingerprint each now holds; any
    other `done` slide stored at one of them becomes `superseded` and its tile rows go, in the
    caller's transaction. Returns the patients those slides left (to re-aggregate: `settle_patients`)."""
    from sqlalchemy import select

    from eagle_index.store import tiles_repo
    from eagle_index.store.models import Slide

    if not held:
        return set()
    old = [s for s in session.scalars(select(Slide).where(Slide.path.in_(list(held)), Slide.status == "done"))
           if s.fingerprint != held[s.path]]
    for slide in old:
        log.info("slide %d (%s) superseded: %s now holds other content", slide.id, slide.name, slide.path)
        slide.status, slide.error = "superseded", f"superseded: {slide.path} now holds {held[slide.path]}"
    if old:
        session.flush()
        tiles_repo.remove_slides_tiles(session, [s.id for s in old])
    return {int(s.patient_id) for s in old}


def settle_patients(ctx: IngestContext, session: "Session", patient_ids, identity: Identity | None = None) -> None:
    """Patients a slide left: re-aggregated from the slides they keep, or, with none left, their
    ingested vectors removed (their tile rows went with the slides)."""
    from sqlalchemy import select

    from eagle_index.store.models import Vector

    for pid in sorted(patient_ids):
        if ctx.catalog.done_artifacts(session, pid):
            reaggregate_patient(ctx, session, pid, identity)
            continue
        sets = session.execute(select(Vector.kind, Vector.signature).where(Vector.patient_id == pid, Vector.source == "ingest")).all()
        for kind, signature in sets:
            ctx.catalog.delete_vectors(session, kind, signature, [pid])


def _size(path: Path) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def reaggregate_patient(ctx: IngestContext, session: "Session", patient_id: int,
                        identity: Identity | None = None) -> pipeline.PatientVectors:
    """Recompute a patient's vectors from its slides' artifacts, inside the caller's transaction.

    `identity` (a `ModelIdentity` or loaded models) signs the vectors; default: the context's models.
    """
    catalog, settings = ctx.catalog, ctx.settings
    models = identity if identity is not None else ctx.models
    slides = [read_slide_artifact(Path(p)) for p in catalog.done_artifacts(session, patient_id)]
    vectors = pipeline.aggregate_patient(slides, settings.eagle.top_k)
    for kind, vector in vectors.by_kind().items():
        catalog.put_vectors(session, kind, models.signature(kind), [patient_id], vector[None, :].astype(np.float32),
                            source="ingest", provenance=models.provenance(kind))
    # the slides' candidate tiles and the patient's tile ranks, for region search (same transaction)
    from eagle_index.store import tiles_repo

    tiles_repo.sync_patient_from_artifacts(session, patient_id, settings.eagle.top_k, models.signature("eagle"))
    return vectors
