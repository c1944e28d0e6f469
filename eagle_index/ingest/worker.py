"""The worker, the one job loop: takes queued jobs in order, embeds, stores, retries with backoff.

`Worker` claims and admits jobs, finishes what its compute step hands back (stored, superseded,
failed, given back) and gives back every claimed job not yet stored when it stops, for every
owner (issue 22 item 4). The compute step is pluggable: `LocalCompute` here (while one slide is
embedded, the next ones are claimed and read ahead by the reader processes,
`pipeline.embed_slides`) or `cluster.RayCompute` (a Ray future per slide on actors).

Each finished job commits its slide row, the patient's re-aggregated vectors and the job's
`done` state in one transaction; the FAISS indexes are synced right after (and reconciled at
start, so a crash between the two is repaired). Any error of one slide — even an unexpected
one — fails that job only; the worker keeps going.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Callable

from eagle_index import pipeline
from eagle_index.errors import EagleIndexError
from eagle_index.fingerprint import companion_files, slide_fingerprint
from eagle_index.ingest.steps import IngestContext, SlideJob
from eagle_index.ingest.storing import StoreItem, store_results
from eagle_index.store.jobs import ClaimedJob, JobQueue

log = logging.getLogger(__name__)


def file_state(path: Path) -> tuple | None:
    """(size, mtime, inode, ctime) of the file and its companions; None if it vanished (the ctime
    catches content copied in with an older mtime, `cp -p`)."""
    try:
        return tuple((st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
                     for st in (p.stat() for p in [path, *companion_files(path)]))
    except OSError:
        return None


def changed_since(job: ClaimedJob, path: Path, before) -> bool:
    """True when the file no longer holds the job's content: its state moved since `before` and its
    fingerprint differs (a mere `chmod` or `touch` moves the state, not the content)."""
    if file_state(path) == before:
        return False
    try:
        return slide_fingerprint(path) != job.fingerprint
    except EagleIndexError:
        return True


POSITION_FILE = "worker.position"


class Position:
    """What the worker is doing, in `DATA/worker.position`, so that the next owner knows what a
    killed one was doing (issue 24 item 5): the jobs it holds (started, not stored: the slide being
    embedded and the one whose top tiles are still to encode), the one being embedded, how many of
    its tiles are done, and whether it is embedded alone. One `pwrite` per batch, no fsync: the
    page cache outlives a killed process (a machine crash loses it, and with it only evidence)."""

    SIZE = 4096

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / POSITION_FILE
        self._fd: int | None = None
        self._warned = False

    def set(self, held: list[ClaimedJob], current: ClaimedJob | None, tiles: int, alone: bool) -> None:
        blob = json.dumps({"pid": os.getpid(), "jobs": [[j.id, j.attempts] for j in held][:100],
                           "job": current.id if current is not None else None, "tiles": tiles, "alone": alone}).encode()
        self._write(blob)

    def clear(self) -> None:
        if self._fd is not None:
            self._write(b"{}")

    def _write(self, blob: bytes) -> None:
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(self._fd, blob.ljust(self.SIZE), 0)
        except OSError as exc:  # evidence only: never a reason to fail a slide (said once)
            if not self._warned:
                self._warned = True
                log.warning("cannot record the worker's position in %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def last_position(data_dir: Path) -> dict | None:
    """What a dead owner's worker was doing (`Position`), or None; the record is removed (it is
    evidence about that process only)."""
    path = Path(data_dir) / POSITION_FILE
    try:
        raw = path.read_bytes()
        path.unlink()
    except OSError:
        return None
    try:
        value = json.loads(raw.strip() or b"{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get("jobs") else None


class Interrupted(Exception):
    """Raised inside the pipeline's progress callback when the worker is asked to stop."""


@dataclass
class Finished:
    """What a compute step hands back for one job it was given: `outcome` is the `SlideResult`,
    an exception (the attempt counts: `fail_job`), a `FinalFailure` (failed for good whatever its
    attempts) or a `GiveBack` (back to the queue, the attempt uncounted). `identity` signs the
    vectors (a Ray actor's `ModelIdentity`; None: the context's models); `on_stored(result,
    seconds, store_seconds)` is told once the result is committed and returns extra fields for
    the `job_done` log line."""

    job: ClaimedJob
    outcome: object
    identity: object = None
    on_stored: Callable | None = None


@dataclass(frozen=True)
class GiveBack:
    """A job handed back by its compute step: requeued with `reason`, its attempt uncounted."""

    reason: str


class FinalFailure(EagleIndexError):
    """A job that fails for good, whatever attempts it has left (a slide that killed N Ray actors)."""


class LocalCompute:
    """The in-process compute step: the pipeline stream (`pipeline.embed_slides`) on this
    process's models, which reads the next slides ahead in the reader processes while one is
    embedded. Results come back in the order the jobs went in. This process embeds, so its death
    is evidence against the slides it held: the loop records its position (`Position`)."""

    records_position = True
    continuous = False  # a session ends when the queue is empty (the stream drains); the loop then polls
    batched_store = False  # results are stored on the loop's thread as they arrive

    def open(self, loop: "Worker") -> None:
        try:
            _ = loop.ctx.models  # load once, before the first job, so failures show at start
        except EagleIndexError as exc:  # no weights: the server still serves; each slide fails with this error
            log.error("slides cannot be embedded until this is fixed: %s", " ".join(str(exc).split()))

    def stream(self, jobs, loop: "Worker", on_start: Callable, progress: Callable):
        """`jobs` yields admitted jobs (pulled as the stream reads ahead); yields one `Finished` per job."""
        from eagle_index.slides.pool import ReadInterrupted

        sent: collections.deque = collections.deque()

        def inputs():
            for job in jobs:
                sent.append(job)
                yield Path(job.path), job.mpp, None

        stream = pipeline.embed_slides(inputs(), loop.ctx.models, loop.ctx.settings, progress=progress, on_start=on_start,
                                       stop=loop.stop)  # a read blocked at shutdown is abandoned (ReadInterrupted)
        try:
            for _, result in stream:
                yield Finished(sent.popleft(), result)
        except (Interrupted, ReadInterrupted):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad slide must never stop the worker
            if sent:
                yield Finished(sent.popleft(), exc)
        finally:
            stream.close()

    def close(self) -> None:
        pass


class _SyncStorer:
    """`BatchStorer`'s interface on the caller's thread: each result stored as it is submitted."""

    def __init__(self, ctx: IngestContext):
        self.ctx = ctx

    def submit(self, job: ClaimedJob, result, seconds: float, identity=None):
        from concurrent.futures import Future

        future: Future = Future()
        try:
            (outcome,) = store_job_results(self.ctx, [(job, result, seconds)], identity=identity)
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            outcome = exc
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
        return future

    def close(self) -> None:
        pass


class Worker:
    """The one job loop (issue 22 item 4), for the daemon, the backfill and the demo: claims queued
    jobs in order, admits each (`admit`: superseded if its file changed since it was queued, failed
    if it is gone), hands it to a compute step, and finishes what comes back: superseded if the
    file changed while it was embedded, stored (`store_job_results`, through the one writer), or
    failed / retried with backoff (`fail_job`). It heartbeats the jobs, records its position for
    the crash cap where the compute step runs in this process, and on stop gives every claimed job
    not yet stored back to the queue, its attempt uncounted.

    The compute step (`compute`) is `LocalCompute` (default: the pipeline stream on this process's
    models, reading ahead) or `cluster.RayCompute` (a Ray future per slide on actors; the only
    module that imports Ray). A step has `open(loop)`, `close()`, `stream(jobs, loop, on_start,
    progress)` (pulls admitted jobs from `jobs` when it has room for one, yields `Finished`) and
    three flags: `records_position`, `continuous` (the stream keeps asking for jobs until stop: `jobs`
    yields None while none is queued) and `batched_store` (results stored by a `BatchStorer`)."""

    def __init__(self, ctx: IngestContext, queue: JobQueue, stop: threading.Event, max_attempts: int = 3,
                 backoff_seconds: float = 5.0, poll_seconds: float = 1.0, quarantine: Path | None = None,
                 heartbeat_seconds: float = 2.0, compute=None):
        self.ctx = ctx
        self.queue = queue
        self.stop = stop
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.poll_seconds = poll_seconds
        self.quarantine = Path(quarantine) if quarantine else None
        self.heartbeat_seconds = heartbeat_seconds
        self.compute = compute if compute is not None else LocalCompute()
        self.wake = threading.Event()
        self.position = Position(ctx.settings.data_dir)
        self._storer = None

    def run(self) -> None:
        """Loop until `stop` is set; the current jobs finish or go back to the queue."""
        try:
            self.compute.open(self)
            # a remote step's results are stored off this loop, in batches (one transaction and one
            # FAISS sync each), so the owner keeps up with many GPUs; close() stores what was handed over
            self._storer = BatchStorer(self.ctx, threads=2, batch=8) if self.compute.batched_store else None
            while not self.stop.is_set():
                if self.compute.continuous:  # the step asks for jobs as it has room for them
                    self.process(None, read_ahead=True)
                    continue
                job = self.queue.claim()
                if job is None:
                    self.wake.wait(self.poll_seconds)
                    self.wake.clear()
                    continue
                # an owner died holding it: embed it alone, so that a death there is evidence against it
                self.process(job, read_ahead=not job.deaths)
        finally:
            if self._storer is not None:
                self._storer.close()
            self.compute.close()
            self.position.close()

    def process(self, job: ClaimedJob | None, read_ahead: bool = False) -> str:
        """Embed and store `job`; its final state. With `read_ahead`, the next queued jobs are
        claimed while it runs (as the compute step has room for them) and read ahead of their turn;
        each is stored as it finishes, and any not finished when `stop` is set go back to the queue.
        A continuous step starts with `job` None and claims its own."""
        records = self.compute.records_position
        continuous = self.compute.continuous
        states: list = []  # the first job's final state, or a future of it (its result being stored)

        def note(state) -> None:  # only the first is answered (a continuous session may run for months)
            if not states:
                states.append(state)

        pending: dict = {}  # job id -> (job, file state, started): handed to the step, not finished
        to_start: collections.deque = collections.deque()  # the same jobs until each starts (heartbeats name it)
        current: list = [None]
        tiles = [0]
        last_beat = [time.monotonic()]
        alone = not read_ahead

        def record() -> None:  # what this process holds, for the next owner if it dies (Position)
            if records:
                waiting = {j.id for j in to_start}
                self.position.set([j for j, _, _ in pending.values() if j.id not in waiting], current[0], tiles[0], alone)

        def jobs():
            nxt = job if job is not None else self.queue.claim()
            while True:
                if nxt is None:
                    if not continuous:
                        return
                    yield None  # nothing queued now: the step asks again later
                else:
                    ended, before = admit(self.queue, nxt, self.max_attempts, self.backoff_seconds, self.quarantine)
                    if ended is not None:
                        note(ended)
                    else:
                        pending[nxt.id] = (nxt, before, time.perf_counter())
                        if records:
                            to_start.append(nxt)
                        yield nxt
                if not read_ahead or self.stop.is_set():
                    return
                # a suspect is embedded alone, never read ahead (where this process's death is evidence)
                nxt = self.queue.claim(suspects=False) if records else self.queue.claim()

        def start(item) -> None:
            current[0], tiles[0], last_beat[0] = to_start.popleft(), 0, time.monotonic()
            record()

        def progress(n: int) -> None:
            tiles[0] += n
            record()
            if self.stop.is_set():
                raise Interrupted()
            if time.monotonic() - last_beat[0] >= self.heartbeat_seconds:
                self.queue.heartbeat(current[0].id, {"tiles": tiles[0], "stage": "ctranspath"})
                last_beat[0] = time.monotonic()

        from eagle_index.slides.pool import ReadInterrupted

        stream = self.compute.stream(jobs(), self, start, progress)
        try:
            for finished in stream:
                claimed, before, started = pending.pop(finished.job.id)
                note(self._finish(finished, before, started))
                record()
                if self.stop.is_set():
                    break
        except (Interrupted, ReadInterrupted):
            pass
        finally:
            stream.close()
            for claimed, _, _ in pending.values():  # claimed (read ahead or interrupted), not stored: back to the queue
                self.give_back(claimed, "interrupted by shutdown")
                note("queued")
            pending.clear()
            if records:
                self.position.clear()
        first = states[0] if states else "queued"
        return first if isinstance(first, str) else first.result()

    def give_back(self, job: ClaimedJob, reason: str) -> None:
        """Back to the queue, the attempt uncounted."""
        try:
            self.queue.requeue(job.id, reason)
        except Exception:  # noqa: BLE001 - recovery at the next start requeues it anyway
            log.exception("could not requeue job %s", job.id)
            return
        log.info(json.dumps({"event": "job_requeued", "job": job.id, "file": str(job.path), "reason": reason}))

    def _finish(self, finished: Finished, before, started: float):
        """One slide's outcome: given back, superseded (the file changed meanwhile), failed, or
        handed to the storer (a future of "done", or of the failed state if it could not be stored)."""
        from concurrent.futures import Future

        job, result = finished.job, finished.outcome
        path = Path(job.path)
        if isinstance(result, GiveBack):
            self.give_back(job, result.reason)
            return "queued"
        if isinstance(result, FinalFailure):
            return fail_job(self.queue, job, str(result), 1, self.backoff_seconds, self.quarantine)
        try:
            if isinstance(result, BaseException):
                raise result
            if changed_since(job, path, before):  # the result is of content that is no longer there
                return superseded(self.queue, job, path, "changed while it was embedded")
        except Exception as exc:  # noqa: BLE001 - one bad slide must never stop the worker
            return self._failed(job, exc)
        seconds, t0 = time.perf_counter() - started, time.perf_counter()
        storer = self._storer if self._storer is not None else _SyncStorer(self.ctx)
        state: Future = Future()

        def stored(future) -> None:
            exc = future.exception()
            if exc is not None:  # the owner could not store this slide: its job fails, not the loop
                state.set_result(self._failed(job, exc))
                return
            if finished.on_stored is not None:  # a remote step: the total is up to its result, storing apart
                log_job_done(job, slide_job_of(job), result, seconds,
                             **finished.on_stored(result, seconds, time.perf_counter() - t0))
            else:  # in process: up to the commit
                log_job_done(job, slide_job_of(job), result, time.perf_counter() - started)
            state.set_result("done")

        storer.submit(job, result, seconds, identity=finished.identity).add_done_callback(stored)
        return state

    def _failed(self, job: ClaimedJob, exc: BaseException) -> str:
        message = str(exc) if isinstance(exc, EagleIndexError) else f"{job.path}: {type(exc).__name__}: {exc}"
        if not isinstance(exc, EagleIndexError):
            log.error("unexpected error on %s", job.path, exc_info=exc)
        return fail_job(self.queue, job, message, self.max_attempts, self.backoff_seconds, self.quarantine)


# -- the owner's half of a job, shared with the Ray cluster driver (eagle_index.cluster) ----------
def slide_job_of(job: ClaimedJob) -> SlideJob:
    path = Path(job.path)
    return SlideJob(path, job.patient or path.stem, job.mpp)


def store_job_result(ctx: IngestContext, job: ClaimedJob, result, seconds: float, identity=None) -> int:
    """Artifact (atomic) and the patient's re-aggregation outside the writer, then slide row +
    patient vectors + job `done` in one write; FAISS follows (`ingest.storing`).

    `identity` signs the vectors (a Ray worker's `ModelIdentity`); default: the context's models."""
    (outcome,) = store_job_results(ctx, [(job, result, seconds)], identity=identity)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def store_job_results(ctx: IngestContext, done: list[tuple[ClaimedJob, object, float]], identity=None) -> list:
    """Several finished jobs (job, result, seconds) in one transaction and one FAISS sync: per job
    its slide id, or the exception that kept it out (an unreadable artifact of its patient; the
    other jobs are stored). For the owner when several results are ready at once."""
    items = [StoreItem(slide_job_of(job), job.fingerprint, result, identity=identity, job_id=job.id, seconds=seconds)
             for job, result, seconds in done]
    return store_results(ctx, items)


class BatchStorer:
    """Stores finished jobs on `threads` threads, each taking whatever is ready (up to `batch`
    results) into one `store_job_results` call: one transaction and one FAISS sync per batch,
    while the other threads write artifacts and aggregate. For an owner that receives results
    faster than one thread stores them (the Ray owner at ~11 slides/s from an 8-GPU node).

    `submit` returns a Future of the slide id (or the exception that kept it out); it blocks
    while `max_pending` results wait, so a slow disk slows the caller instead of filling memory.
    Results of one patient may go to different threads: `ingest.storing` serializes them.
    """

    def __init__(self, ctx: IngestContext, threads: int = 4, batch: int = 8, max_pending: int = 64):
        import queue

        self.ctx, self.batch = ctx, max(1, batch)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._threads = [threading.Thread(target=self._loop, name=f"store-{i}", daemon=True) for i in range(max(1, threads))]
        for t in self._threads:
            t.start()

    def submit(self, job: ClaimedJob, result, seconds: float, identity=None):
        from concurrent.futures import Future

        future: Future = Future()
        self._queue.put((job, result, seconds, identity, future))
        return future

    def _loop(self) -> None:
        import queue

        while True:
            first = self._queue.get()
            if first is None:
                return
            taken, stop = [first], False
            while len(taken) < self.batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                taken.append(item)
            by_identity: dict[int, list] = {}  # one call per identity (each signs its own vectors)
            for item in taken:
                by_identity.setdefault(id(item[3]), []).append(item)
            for items in by_identity.values():
                try:
                    outcomes = store_job_results(self.ctx, [(job, result, seconds) for job, result, seconds, _, _ in items],
                                                 identity=items[0][3])
                except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                    outcomes = [exc] * len(items)
                for (*_, future), outcome in zip(items, outcomes):
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
            if stop:
                return

    def close(self) -> None:
        """Store what was submitted, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def __enter__(self) -> "BatchStorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def store_job_result_in_writer(ctx: IngestContext, job: ClaimedJob, result, seconds: float, identity=None) -> int:
    """The previous path, kept as the reference that tests/test_owner_store.py and
    benchmarks/owner_bench.py compare with: the patient's artifacts are read and re-aggregated
    inside the catalog's exclusive write."""
    from eagle_index.ingest.steps import store_slide, write_artifact

    target = write_artifact(ctx, job.fingerprint, result, identity)

    def write(session) -> int:
        slide_id = store_slide(ctx, session, slide_job_of(job), job.fingerprint, result, target, identity)
        JobQueue.mark_done(session, job.id, slide_id, seconds)
        return slide_id

    slide_id = ctx.catalog.write(write)
    ctx.sync_index()
    return slide_id


def job_deadline(settings, path: Path) -> float:
    """Seconds a job may stay with a worker the owner cannot look into (a Ray actor) before it is
    presumed hung (issue 24 item 3): three times the slide's read lease (the reads themselves are
    bounded by that lease in the worker's reader pool; the rest is embedding)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0
    return 3 * settings.tiling.read_lease(size)


def admit(queue: JobQueue, job: ClaimedJob, max_attempts: int, backoff_seconds: float,
          quarantine: Path | None = None) -> tuple[str | None, tuple | None]:
    """A claimed job, before it is embedded here or on a Ray worker: (None, the file's state to
    compare after embedding), or (the state it ended in, None) - superseded if the file changed
    since it was queued, failed if the file is gone. Both job loops use it."""
    path = Path(job.path)
    if changed_since_enqueued(job, path):
        return superseded(queue, job, path, "changed after it was queued"), None
    if not path.exists():
        return fail_job(queue, job, f"{path}: file disappeared before it was embedded", max_attempts, backoff_seconds,
                        quarantine), None
    return None, file_state(path)


def changed_since_enqueued(job: ClaimedJob, path: Path) -> bool:
    """True when the file was modified after its job was queued and no longer has the job's content
    (hashed again only then: the common case costs one stat)."""
    if job.created_at is None:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    if max(st.st_mtime, st.st_ctime) <= job.created_at.replace(tzinfo=timezone.utc).timestamp():  # ctime: `cp -p`
        return False
    try:
        return slide_fingerprint(path) != job.fingerprint
    except EagleIndexError:
        return False


def superseded(queue: JobQueue, job: ClaimedJob, path: Path, why: str) -> str:
    """A job whose file changed under it: not a failure; the new content is (or will be) its own job."""
    reason = f"superseded: {path} {why}; its new content needs a job of its own (a watcher queues it once the file settles)"
    queue.supersede(job.id, reason)
    log.info(json.dumps({"event": "job_superseded", "job": job.id, "file": str(path), "reason": reason}))
    return "skipped"


def fail_job(queue: JobQueue, job: ClaimedJob, message: str, max_attempts: int, backoff_seconds: float,
             quarantine: Path | None = None) -> str:
    """Count a failed attempt: back to the queue with backoff, or `failed` (recorded, maybe quarantined)."""
    state = queue.fail(job.id, message, max_attempts, backoff_seconds)
    slide_job = slide_job_of(job)
    if state == "failed":
        _record_failure(slide_job, quarantine)
    log.warning(json.dumps({"event": "job_" + ("failed" if state == "failed" else "retry"), "job": job.id,
                            "file": str(slide_job.path), "attempt": job.attempts, "error": message}))
    return state


def log_job_done(job: ClaimedJob, slide_job: SlideJob, result, seconds: float, **extra) -> None:
    log.info(json.dumps({
        "event": "job_done", "job": job.id, "file": str(slide_job.path), "patient": slide_job.patient, "tiles": result.n_tiles,
        "mpp": result.mpp, "mpp_source": result.mpp_source,
        "seconds": {k: round(v, 3) for k, v in result.timings.items()},
        "total_seconds": round(seconds, 3), **extra,
    }))


def _record_failure(slide_job: SlideJob, quarantine: Path | None) -> None:
    """The failed job (state, error) is the record: no slide row, no patient; the file may be quarantined."""
    if quarantine is not None and slide_job.path.exists():
        quarantine.mkdir(parents=True, exist_ok=True)
        target = quarantine / slide_job.path.name
        shutil.move(str(slide_job.path), target)
        log.info("moved %s to quarantine %s", slide_job.path, target)
