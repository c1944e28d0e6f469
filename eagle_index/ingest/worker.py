"""The worker: takes queued jobs in order, embeds, stores, retries with backoff.

Each finished job commits its slide row, the patient's re-aggregated vectors and the job's
`done` state in one transaction; the FAISS indexes are synced right after (and reconciled at
start, so a crash between the two is repaired). Any error of one slide — even an unexpected
one — fails that job only; the worker keeps going.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

from eagle_index.errors import EagleIndexError
from eagle_index.ingest.steps import SlideJob, embed_to_artifact, store_slide
from eagle_index.store.jobs import ClaimedJob, JobQueue

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised inside the pipeline's progress callback when the worker is asked to stop."""


class Worker:
    def __init__(self, service, queue: JobQueue, stop: threading.Event, max_attempts: int = 3,
                 backoff_seconds: float = 5.0, poll_seconds: float = 1.0, quarantine: Path | None = None,
                 heartbeat_seconds: float = 2.0):
        self.service = service
        self.queue = queue
        self.stop = stop
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.poll_seconds = poll_seconds
        self.quarantine = Path(quarantine) if quarantine else None
        self.heartbeat_seconds = heartbeat_seconds
        self.wake = threading.Event()

    def run(self) -> None:
        """Loop until `stop` is set; the current job finishes or goes back to the queue."""
        try:
            _ = self.service.models  # load once, before the first job, so failures show at start
        except EagleIndexError as exc:  # no weights: the server still serves; each slide fails with this error
            log.error("slides cannot be embedded until this is fixed: %s", " ".join(str(exc).split()))
        while not self.stop.is_set():
            job = self.queue.claim()
            if job is None:
                self.wake.wait(self.poll_seconds)
                self.wake.clear()
                continue
            self.process(job)

    def process(self, job: ClaimedJob) -> str:
        started = time.perf_counter()
        path = Path(job.path)
        tiles = 0
        last_beat = time.monotonic()

        def progress(n: int) -> None:
            nonlocal tiles, last_beat
            tiles += n
            if self.stop.is_set():
                raise Interrupted()
            if time.monotonic() - last_beat >= self.heartbeat_seconds:
                self.queue.heartbeat(job.id, {"tiles": tiles, "stage": "ctranspath"})
                last_beat = time.monotonic()

        slide_job = SlideJob(path, job.patient or path.stem, job.mpp)
        try:
            if not path.exists():
                raise EagleIndexError(f"{path}: file disappeared before it was embedded")
            result, target = embed_to_artifact(self.service, slide_job, job.fingerprint, progress)
            if self.stop.is_set():
                raise Interrupted()
            with self.service.catalog.transaction() as session:
                slide_id = store_slide(self.service, session, slide_job, job.fingerprint, result, target)
                JobQueue.mark_done(session, job.id, slide_id, time.perf_counter() - started)
            self.service.vectors.sync_all()
        except Interrupted:
            self.queue.requeue(job.id, "interrupted by shutdown")
            log.info(json.dumps({"event": "job_requeued", "job": job.id, "file": str(path)}))
            return "queued"
        except Exception as exc:  # noqa: BLE001 - one bad slide must never stop the worker
            message = str(exc) if isinstance(exc, EagleIndexError) else f"{path}: {type(exc).__name__}: {exc}"
            if not isinstance(exc, EagleIndexError):
                log.exception("unexpected error on %s", path)
            state = self.queue.fail(job.id, message, self.max_attempts, self.backoff_seconds)
            if state == "failed":
                self._record_failure(slide_job, job, message)
            log.warning(json.dumps({"event": "job_" + ("failed" if state == "failed" else "retry"), "job": job.id,
                                    "file": str(path), "attempt": job.attempts, "error": message}))
            return state
        log.info(json.dumps({
            "event": "job_done", "job": job.id, "file": str(path), "patient": slide_job.patient, "tiles": result.n_tiles,
            "mpp": result.mpp, "mpp_source": result.mpp_source,
            "seconds": {k: round(v, 3) for k, v in result.timings.items()},
            "total_seconds": round(time.perf_counter() - started, 3),
        }))
        return "done"

    def _record_failure(self, slide_job: SlideJob, job: ClaimedJob, message: str) -> None:
        # the failed job (state, error) is the record: no slide row, no patient
        if self.quarantine is not None and slide_job.path.exists():
            self.quarantine.mkdir(parents=True, exist_ok=True)
            target = self.quarantine / slide_job.path.name
            shutil.move(str(slide_job.path), target)
            log.info("moved %s to quarantine %s", slide_job.path, target)
