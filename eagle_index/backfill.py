"""`eagle-index backfill`: enqueue an archive, embed it (on Ray workers with `--cluster`), exit when done.

A backfill is an owner process (eagle_index.server.run_owner) with a session: it holds the
catalog, publishes its loopback API in `DATA/owner.json` (so `eagle-index status` shows the
queue and the Ray workers while it runs), enqueues every slide of the given paths into the job
queue, and stops once no job is queued or running. Because the queue lives in the catalog,
running the same command again after a crash or Ctrl-C resumes: finished slides are `done`
(or `skipped` when an earlier `ingest` stored them) and are never embedded again.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from eagle_index.errors import EagleIndexError
from eagle_index.fingerprint import slide_fingerprint
from eagle_index.ingest.enqueue import enqueue_file
from eagle_index.ingest.steps import SlideJob

log = logging.getLogger(__name__)

FINISHED = ("done", "skipped", "failed")


@dataclass
class Backfill:
    jobs: list[SlideJob]
    show_progress: bool = True
    job_ids: list[int] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def start(self, service, stop: threading.Event) -> None:
        """Fingerprint (threads: it is I/O) and enqueue every slide; one job per fingerprint, ever."""
        self.started = time.monotonic()
        self._bar = _Bar(len(self.jobs)) if self.show_progress and sys.stderr.isatty() else None

        def key(job: SlideJob):
            try:
                return job, slide_fingerprint(job.path), None
            except EagleIndexError as exc:
                return job, None, str(exc)

        with ThreadPoolExecutor(max_workers=8) as pool:
            for job, fingerprint, error in pool.map(key, self.jobs):
                if stop.is_set():
                    break
                if fingerprint is None:
                    self.unreadable.append({"file": str(job.path), "error": error})
                    continue
                _, job_id = enqueue_file(service.jobs, job.path.resolve(), job.patient, job.mpp, fingerprint=fingerprint)
                self.job_ids.append(job_id)
        self.counts = self.initial = service.jobs.states(self.job_ids)
        log.info(json.dumps({"event": "backfill_enqueued", "slides": len(self.jobs), "jobs": len(self.job_ids),
                             "already_finished": {k: self.initial[k] for k in FINISHED}}))

    def tick(self, service) -> bool:
        """Update the progress; True once nothing is left to do in the queue."""
        self.counts = service.jobs.states(self.job_ids)
        if self._bar is not None:
            self._bar.update(*self._progress())
        return service.jobs.pending() == 0

    def _progress(self) -> tuple[int, int, float | None, float | None]:
        finished = sum(self.counts.get(k, 0) for k in FINISHED)
        total = len(self.job_ids) or len(self.jobs)
        this_run = finished - sum(self.initial.get(k, 0) for k in FINISHED)
        elapsed = time.monotonic() - self.started
        per_hour = this_run / elapsed * 3600 if this_run > 0 and elapsed > 0 else None
        eta = (total - finished) / per_hour * 3600 if per_hour else None
        return finished, total, per_hour, eta

    def finish(self, service, interrupted: bool, errors: list) -> int:
        if self.job_ids:
            self.counts = service.jobs.states(self.job_ids)
        if self._bar is not None:
            self._bar.update(*self._progress())
            self._bar.close()
        finished, total, per_hour, _ = self._progress()
        c = self.counts
        left = c.get("queued", 0) + c.get("running", 0)
        line = (f"backfill: {c.get('done', 0)} done, {c.get('skipped', 0)} skipped (already stored), "
                f"{c.get('failed', 0) + len(self.unreadable)} failed, {left} left of {len(self.jobs)} slide(s)")
        if per_hour:
            line += f"; {per_hour:.0f} slides/hour this run"
        print(line, flush=True)
        failed_jobs = [j for j in service.jobs.jobs("failed", limit=100_000) if j["id"] in set(self.job_ids)]
        for item in [*self.unreadable, *failed_jobs]:
            print(f"FAILED {item['file']}: {item['error']}", file=sys.stderr, flush=True)
        if errors:
            first = errors[0]
            message = str(first) if isinstance(first, EagleIndexError) else f"{type(first).__name__}: {first}"
            print(f"error: {message}", file=sys.stderr, flush=True)
            return 1
        if interrupted:
            print(f"interrupted: {left} slide(s) back in the queue; run the same command again to resume", file=sys.stderr, flush=True)
            return 130
        return 1 if (c.get("failed", 0) or self.unreadable) else 0


class _Bar:
    """A rich progress bar on stderr: slides done / total, slides per hour, ETA."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TextColumn("slides"),
                                 TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"),
                                 console=Console(file=sys.stderr), transient=False)
        self.task = self.progress.add_task("backfill", total=total, rate="– slides/h", eta="–")
        self.progress.start()

    def update(self, done: int, total: int, per_hour: float | None, eta: float | None) -> None:
        self.progress.update(self.task, completed=done, total=total,
                             rate=f"{per_hour:,.0f} slides/h" if per_hour else "– slides/h", eta=_duration(eta))

    def close(self) -> None:
        self.progress.stop()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:d}:{minutes:02d}:{secs:02d}"


def plan(paths: list[Path], slide_table: Path | None, mpp: float | None) -> list[SlideJob]:
    """The slides of `paths` and their patients (slide table, else the name), checked before anything starts."""
    from eagle_index.ingest.steps import plan_jobs

    return plan_jobs(paths, None, slide_table, mpp)
