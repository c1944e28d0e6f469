"""Watch folders for complete slide files and enqueue them by content fingerprint.

A file is complete when its size, mtime, inode and ctime (and, for MRXS, those of its data folder) have
not changed for `settle_seconds`. Temp and partial names are ignored. A link is followed only
when its target (resolved) lies inside a watched folder: nothing outside is ever hashed or
opened. Times are compared as UTC instants (the catalog stores naive UTC), whatever `TZ` says. Filesystem events
(watchdog) wake the scan early; a periodic scan is the fallback that also works on network
mounts, where events are unreliable.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timezone
from pathlib import Path

from eagle_index.errors import EagleIndexError
from eagle_index.fingerprint import companion_files, slide_fingerprint
from eagle_index.ingest.enqueue import enqueue_file
from eagle_index.ingest.patients import PatientResolver
from eagle_index.ingest.steps import SLIDE_SUFFIXES
from eagle_index.store.jobs import JobQueue

log = logging.getLogger(__name__)

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download", ".filepart", ".copying", ".lock", ".swp")


def is_candidate(path: Path) -> bool:
    name = path.name
    if name.startswith((".", "~")) or name.lower().endswith(PARTIAL_SUFFIXES):
        return False
    return path.suffix.lower() in SLIDE_SUFFIXES


def file_state(path: Path) -> tuple | None:
    """(size, mtime, inode, ctime) of the file and its companions; None if it vanished. The ctime
    moves on every write, so content copied in with an older mtime (`cp -p`) is a change too."""
    try:
        parts = [path, *companion_files(path)]
        return tuple((st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) for st in (p.stat() for p in parts))
    except OSError:
        return None


class Watcher:
    def __init__(self, roots: list[Path], queue: JobQueue, resolver: PatientResolver,
                 settle_seconds: float = 5.0, poll_seconds: float = 2.0):
        self.roots = [Path(r) for r in roots]
        self._real_roots = [Path(r).resolve() for r in roots]
        self._refused: set[Path] = set()
        self.queue = queue
        self.resolver = resolver
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self._seen: dict[Path, tuple[tuple, float]] = {}  # path -> (state, time it was first seen in that state)
        self._handled: dict[Path, tuple] = {}  # path -> state when enqueued
        self.wake = threading.Event()

    def _files(self):
        for root in self.roots:
            if not root.is_dir():
                continue
            for path in root.rglob("*"):
                if not is_candidate(path) or not self._inside_roots(path):
                    continue
                if path.is_file():  # True only for regular files (links followed): never a FIFO, socket or device
                    if not _inside_mrxs_folder(path):
                        yield path
                elif path.exists() and not path.is_dir() and path not in self._refused:
                    self._refused.add(path)  # a FIFO would block the scan in open(): listed once, never opened
                    log.warning("watch: %s is not a regular file; ignored", path)

    def _inside_roots(self, path: Path) -> bool:
        """Resolve links, then check containment: a link out of the watched folders is never followed."""
        try:
            real = path.resolve()
        except (OSError, RuntimeError):  # a link loop
            real = None
        if real is not None and any(real == root or root in real.parents for root in self._real_roots):
            return True
        if path not in self._refused:
            self._refused.add(path)
            log.warning("watch: %s links outside the watched folders (to %s); ignored", path, real)
        return False

    def scan_once(self) -> list[dict]:
        """One pass over the roots; enqueue files that have settled. Returns what was enqueued."""
        enqueued = []
        present = set()
        for path in list(self._files()):  # one listing per scan: enqueueing (hashing) takes time, and files
            # created meanwhile must not be seen in a sub-folder listed later but stamped with this scan's start
            present.add(path)
            state = file_state(path)
            now = time.monotonic()  # when this state was seen (a scan that hashes files takes a while)
            if state is None or self._handled.get(path) == state:
                continue
            previous = self._seen.get(path)
            if previous is None or previous[0] != state:
                self._seen[path] = (state, now)
                continue
            if now - previous[1] < self.settle_seconds:
                continue
            outcome = self._enqueue(path)
            self._handled[path] = state
            self._seen.pop(path, None)
            if outcome:
                enqueued.append(outcome)
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        return enqueued

    def _enqueue(self, path: Path) -> dict | None:
        if not self._inside_roots(path):  # checked again just before the file is opened
            return None
        known = self.queue.known_path(str(path))
        queued_at = known.created_at.replace(tzinfo=timezone.utc).timestamp() if known is not None and known.created_at else None
        if queued_at is not None and _last_change(path) < queued_at - 1:
            return None  # enqueued by an earlier run and unchanged since: no need to hash it again
        try:
            fingerprint = slide_fingerprint(path)
            answer = self.resolver.resolve(path)
        except EagleIndexError as exc:
            log.warning("cannot enqueue %s: %s", path, exc)
            return None
        if answer.note:
            log.warning("patient id: %s", answer.note)
        state, job_id = enqueue_file(self.queue, path, answer.patient, answer.mpp, answer.note, fingerprint)
        log.info("watch: %s -> %s (job %d, patient %s from %s)", path.name, state, job_id, answer.patient, answer.source)
        return {"file": str(path), "state": state, "job": job_id, "patient": answer.patient}

    def run(self, stop: threading.Event) -> None:
        observer = self._start_observer()
        try:
            while not stop.is_set():
                try:
                    self.scan_once()
                except Exception:  # never let one bad scan stop the daemon
                    log.exception("watch scan failed")
                self.wake.wait(self.poll_seconds)
                self.wake.clear()
        finally:
            if observer is not None:
                observer.stop()

    def _start_observer(self):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return None
        wake = self.wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                wake.set()

        observer = Observer()
        for root in self.roots:
            if root.is_dir():
                observer.schedule(Handler(), str(root), recursive=True)
        observer.daemon = True
        observer.start()
        return observer


def _last_change(path: Path) -> float:
    """When the file last changed: its mtime, or its ctime when later (`cp -p` keeps an older mtime)."""
    st = path.stat()
    return max(st.st_mtime, st.st_ctime)


def _inside_mrxs_folder(path: Path) -> bool:
    """Files in the data folder of an MRXS slide belong to it, not to the queue."""
    parent = path.parent
    return parent.with_suffix(".mrxs").exists() or any(parent.parent.glob(f"{parent.name}.mrxs"))
