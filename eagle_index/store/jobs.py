"""The ingestion job queue, kept in the catalog so it survives crashes with the data it guards.

Every transition is one transaction. A job is claimed with a lease; the owner extends the
lease while it works. Jobs found `running` when an owner starts belong to a dead process
(only one process owns the catalog) and go back to the queue, the attempt not counted: a
process death counts against a slide only with evidence (issue 24 item 5, `recover_dead_owner`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, update

from eagle_index.results import JobFailure, QueueSummary, RunningJob, Throughput
from eagle_index.store.catalog import Catalog
from eagle_index.store.models import Job, utcnow

STATES = ("queued", "running", "done", "failed", "skipped")


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    fingerprint: str
    path: str
    patient: str | None
    mpp: float | None
    attempts: int
    created_at: datetime | None = None  # naive UTC, like every catalog time
    error: str | None = None
    deaths: int = 0  # owner processes that died while they held this job (a suspect is embedded alone)


class JobQueue:
    def __init__(self, catalog: Catalog, worker_id: str, lease_seconds: float = 300.0):
        self.catalog = catalog
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)

    # -- enqueue ------------------------------------------------------------------------
    def known_path(self, path: str) -> Job | None:
        with self.catalog.transaction() as session:
            return session.scalar(select(Job).where(Job.path == path).order_by(Job.id.desc()).limit(1))

    def enqueue(self, fingerprint: str, path: str, patient: str | None, mpp: float | None = None,
                note: str | None = None) -> tuple[str, int]:
        """('queued' | 'duplicate' | 'skipped', job id): one job per fingerprint, ever."""
        from eagle_index.store.models import Slide

        def write(session) -> tuple[str, int]:
            existing = session.scalar(select(Job).where(Job.fingerprint == fingerprint))
            older = session.scalars(select(Job).where(Job.path == path, Job.state.in_(("queued", "failed")),
                                                      Job.fingerprint != fingerprint)).all()
            if existing is not None:
                if not _came_back(session, existing):
                    return "duplicate", existing.id
                # A -> B -> A at one path: B superseded A's slide, and A's content is back. Its one job runs again
                # (one job per fingerprint, ever), and storing it supersedes B in turn (issue 24 item 2).
                now = utcnow()
                existing.state, existing.path, existing.patient, existing.mpp = "queued", path, patient, mpp
                existing.attempts, existing.last_error, existing.next_attempt_at = 0, None, None
                existing.lease_until, existing.worker_id, existing.slide_id = None, None, None
                existing.started_at, existing.finished_at, existing.updated_at = None, None, now
                existing.progress = json.dumps({"note": note or f"{path} holds this content again"})
                for old_job in older:
                    _supersede(session, old_job, f"superseded: {path} changed; job {existing.id} has its new content")
                return "queued", existing.id
            done = session.scalar(select(Slide.id).where(Slide.fingerprint == fingerprint, Slide.status == "done"))
            state = "skipped" if done is not None else "queued"
            job = Job(fingerprint=fingerprint, path=path, patient=patient, mpp=mpp, state=state, attempts=0,
                      progress=json.dumps({"note": note}) if note else None, slide_id=done,
                      last_error="already ingested" if done is not None else None)
            session.add(job)
            session.flush()
            for old in older:  # e.g. a partial copy that settled while the writer paused: the new content replaces it
                _supersede(session, old, f"superseded: {path} changed; job {job.id} has its new content")
            return state, job.id

        return self.catalog.write(write)

    def supersede(self, job_id: int, reason: str) -> None:
        """A job whose file changed under it: not a failure; the new content is (or will be) its own job."""
        def write(session) -> None:
            job = session.get(Job, job_id)
            if job is not None:
                _supersede(session, job, reason)

        self.catalog.write(write)

    # -- claim / finish -------------------------------------------------------------------
    def claim(self, suspects: bool = True) -> ClaimedJob | None:
        """The oldest queued job that is due, now running under our lease. `suspects=False` (a
        read-ahead claim) passes over jobs an owner died holding: those are embedded alone."""
        now = utcnow()

        def write(session) -> ClaimedJob | None:
            query = select(Job).where(Job.state == "queued", (Job.next_attempt_at.is_(None)) | (Job.next_attempt_at <= now))
            if not suspects:
                query = query.where(Job.progress.is_(None) | ~Job.progress.contains('"deaths"'))
            job = session.scalar(query.order_by(Job.id).limit(1))
            if job is None:
                return None
            job.state, job.worker_id, job.lease_until = "running", self.worker_id, now + self.lease
            job.attempts += 1
            job.started_at = job.updated_at = now
            return ClaimedJob(job.id, job.fingerprint, job.path, job.patient, job.mpp, job.attempts, job.created_at,
                              deaths=len(_progress(job).get("deaths", [])))

        return self.catalog.write(write, bookkeeping=True)

    def heartbeat(self, job_id: int, progress: dict | None = None) -> None:
        now = utcnow()

        def write(session) -> None:
            job = session.get(Job, job_id)
            if job is None:
                return
            job.lease_until, job.updated_at = now + self.lease, now
            if progress is not None:
                job.progress = json.dumps(_keep_deaths(job, progress))

        self.catalog.write(write, bookkeeping=True)

    @staticmethod
    def mark_done(session, job_id: int, slide_id: int | None, duration_s: float) -> None:
        """Called inside the transaction that stores the slide, so both commit together."""
        now = utcnow()
        session.execute(update(Job).where(Job.id == job_id).values(
            state="done", slide_id=slide_id, duration_s=duration_s, finished_at=now, updated_at=now,
            lease_until=None, last_error=None))

    @staticmethod
    def mark_many_done(session, done: list[tuple[int, int | None, float]]) -> None:
        """`mark_done` for several (job id, slide id, seconds) in one statement (a batch of stored results)."""
        if not done:
            return
        if len(done) == 1:
            JobQueue.mark_done(session, *done[0])
            return
        now = utcnow()
        ids = [int(job_id) for job_id, _, _ in done]
        session.execute(update(Job).where(Job.id.in_(ids)).values(
            state="done", slide_id=case({int(j): s for j, s, _ in done}, value=Job.id),
            duration_s=case({int(j): float(d) for j, _, d in done}, value=Job.id), finished_at=now, updated_at=now,
            lease_until=None, last_error=None).execution_options(synchronize_session=False))

    def fail(self, job_id: int, error: str, max_attempts: int, backoff_s: float) -> str:
        """Back to the queue with exponential backoff, or `failed` after max_attempts."""
        now = utcnow()

        def write(session) -> str:
            job = session.get(Job, job_id)
            job.last_error, job.updated_at, job.lease_until = error, now, None
            if job.attempts >= max_attempts:
                job.state, job.finished_at = "failed", now
            else:
                job.state = "queued"
                job.next_attempt_at = now + timedelta(seconds=backoff_s * 2 ** (job.attempts - 1))
            return job.state

        return self.catalog.write(write, bookkeeping=True)

    def record_failure(self, fingerprint: str, path: str, patient: str | None, error: str) -> int:
        """A slide that failed outside the queue (`eagle-index ingest`): a failed job, never a slide row."""
        now = utcnow()

        def write(session) -> int:
            job = session.scalar(select(Job).where(Job.fingerprint == fingerprint))
            if job is None:
                job = Job(fingerprint=fingerprint, path=path, patient=patient, state="failed", attempts=0, created_at=now)
                session.add(job)
            job.path, job.last_error, job.state = path, error, "failed"
            job.attempts = (job.attempts or 0) + 1
            job.finished_at = job.updated_at = now
            job.lease_until = None
            session.flush()
            return job.id

        return self.catalog.write(write, bookkeeping=True)

    def resolve_failure(self, fingerprint: str) -> None:
        """A slide that failed before and has now been stored: its failed job is done."""
        now = utcnow()
        self.catalog.write(lambda session: session.execute(update(Job).where(Job.fingerprint == fingerprint, Job.state == "failed").values(
            state="done", last_error=None, finished_at=now, updated_at=now)), bookkeeping=True)

    def requeue(self, job_id: int, reason: str) -> None:
        """Give a job back untouched (shutdown): the attempt does not count."""
        def write(session) -> None:
            job = session.get(Job, job_id)
            if job is not None and job.state == "running":
                job.state, job.attempts, job.lease_until, job.worker_id = "queued", max(0, job.attempts - 1), None, None
                job.progress = json.dumps(_keep_deaths(job, {"note": reason}))

        self.catalog.write(write, bookkeeping=True)

    def retry(self, job_id: int) -> None:
        """A failed job back to the queue (the UI's re-queue button)."""
        def write(session) -> None:
            job = session.get(Job, job_id)
            if job is not None and job.state == "failed":
                job.state, job.attempts, job.next_attempt_at, job.progress = "queued", 0, None, None

        self.catalog.write(write, bookkeeping=True)

    def recover_dead_owner(self, max_attempts: int, position: dict | None = None) -> tuple[int, list[ClaimedJob]]:
        """On start: every `running` job belongs to a dead owner. (jobs requeued, jobs failed for good).

        A death is not an attempt: the job goes back to the queue with its attempt given back
        (an operator's restart or the OOM killer must not use up a healthy slide's attempts).
        Evidence is `position`, what the dead owner's worker was doing (`ingest.worker.Position`:
        the jobs it held, the one it embedded and how many of its tiles, whether alone). Each job it
        held gets the death recorded (`progress.deaths`); such a suspect is then embedded alone, after
        a clean start, nothing read ahead beside it. A slide whose processing kills the owner dies at
        the same point each time: once `max_attempts` deaths while it was embedded alone fall at the
        same tile count, it is failed for good with that reason. Random kills fall elsewhere."""
        now = utcnow()
        held = {int(j): int(a) for j, a in (position or {}).get("jobs", [])}
        current = (position or {}).get("job")

        def write(session) -> tuple[int, list[ClaimedJob]]:
            requeued, failed = 0, []
            for job in session.scalars(select(Job).where(Job.state == "running")):
                info = _progress(job)
                deaths = list(info.get("deaths", []))
                if held.get(job.id) == job.attempts:  # it was in the dead owner's hands, this very attempt
                    alone = job.id == current and bool(position.get("alone")) and len(held) == 1
                    tiles = int(position.get("tiles", 0)) if job.id == current else None
                    deaths.append({"tiles": tiles, "alone": alone, "at": _iso(now)})
                    same = [d for d in deaths if d.get("alone") and d.get("tiles") == tiles]
                    if alone and len(same) >= max_attempts:
                        reason = (f"{job.path}: the process died {len(same)} times at the same point of embedding this "
                                  f"slide (after {tiles} tiles, embedded alone after a clean start each time); not retried")
                        job.state, job.finished_at, job.updated_at, job.lease_until, job.worker_id = "failed", now, now, None, None
                        job.last_error = reason
                        job.progress = json.dumps({"deaths": deaths})
                        failed.append(ClaimedJob(job.id, job.fingerprint, job.path, job.patient, job.mpp, job.attempts,
                                                 job.created_at, reason, len(deaths)))
                        continue
                job.state, job.lease_until, job.worker_id, job.updated_at = "queued", None, None, now
                job.attempts = max(0, job.attempts - 1)
                note = {"note": "requeued: the owner process died while it held this job"}
                job.progress = json.dumps({**note, "deaths": deaths} if deaths else note)
                requeued += 1
            return requeued, failed

        return self.catalog.write(write, bookkeeping=True)

    def recover(self) -> int:
        """On start, without evidence of what the dead owner did: every `running` job goes back to the queue."""
        return self.recover_dead_owner(max_attempts=1 << 30)[0]

    # -- observability ---------------------------------------------------------------------
    def summary(self, failures: int = 20) -> QueueSummary:
        with self.catalog.transaction() as session:
            counts = dict(session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all())
            running = session.scalars(select(Job).where(Job.state == "running").order_by(Job.started_at)).all()
            failed = session.scalars(select(Job).where(Job.state == "failed").order_by(Job.finished_at.desc()).limit(failures)).all()
            hour_ago = utcnow() - timedelta(hours=1)
            done_last_hour = session.scalar(select(func.count(Job.id)).where(Job.state == "done", Job.finished_at >= hour_ago))
            mean_s = session.scalar(select(func.avg(Job.duration_s)).where(Job.state == "done"))
            return QueueSummary(
                queue={state: int(counts.get(state, 0)) for state in STATES},
                running=tuple(RunningJob(j.id, j.path, j.patient, j.attempts, j.worker_id, _iso(j.started_at),
                                         json.loads(j.progress) if j.progress else None) for j in running),
                failures=tuple(JobFailure(j.path, j.last_error, j.attempts, j.id, _iso(j.finished_at)) for j in failed),
                throughput=Throughput(int(done_last_hour or 0), round(3600.0 / mean_s, 1) if mean_s else None,
                                      round(float(mean_s), 3) if mean_s else None),
            )

    def pending(self) -> int:
        """Jobs still to do: queued (due or waiting for a retry) or running."""
        with self.catalog.transaction() as session:
            return int(session.scalar(select(func.count(Job.id)).where(Job.state.in_(("queued", "running")))) or 0)

    def states(self, job_ids: list[int]) -> dict[str, int]:
        """How many of these jobs are in each state (a backfill's own progress)."""
        counts = dict.fromkeys(STATES, 0)
        with self.catalog.transaction() as session:
            for start in range(0, len(job_ids), 10_000):
                chunk = job_ids[start:start + 10_000]
                for state, n in session.execute(select(Job.state, func.count(Job.id)).where(Job.id.in_(chunk)).group_by(Job.state)):
                    counts[state] = counts.get(state, 0) + int(n)
        return counts

    def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]:
        with self.catalog.transaction() as session:
            query = select(Job).order_by(Job.id.desc()).limit(limit)
            if state:
                query = query.where(Job.state == state)
            return [{"id": j.id, "file": j.path, "patient": j.patient, "state": j.state, "attempts": j.attempts,
                     "error": j.last_error, "created_at": _iso(j.created_at), "finished_at": _iso(j.finished_at)}
                    for j in session.scalars(query)]


def _progress(job: Job) -> dict:
    try:
        value = json.loads(job.progress) if job.progress else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _keep_deaths(job: Job, progress: dict) -> dict:
    """`progress` with the job's recorded owner deaths kept (the evidence of issue 24 item 5)."""
    deaths = _progress(job).get("deaths")
    return {**progress, "deaths": deaths} if deaths else progress


def _came_back(session, job: Job) -> bool:
    """A finished job whose slide was superseded (other content came to its path) and is held by no other
    done slide: its content is at a path again, so it must be embedded again."""
    from eagle_index.store.models import Slide

    if job.state not in ("done", "skipped"):
        return False
    states = set(session.scalars(select(Slide.status).where(Slide.fingerprint == job.fingerprint)).all())
    return "superseded" in states and "done" not in states


def _supersede(session, job: Job, reason: str) -> None:
    """Mark a job skipped (not failed) and drop the failed-slide record of its old content."""
    from sqlalchemy import delete

    from eagle_index.store.models import Slide

    now = utcnow()
    job.state, job.last_error, job.finished_at, job.updated_at, job.lease_until = "skipped", reason, now, now, None
    session.execute(delete(Slide).where(Slide.fingerprint == job.fingerprint, Slide.status == "failed"))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None
