"""One writer for the catalog and the indexes that follow it, and the lock readers search under.

Why: DuckDB allows one writing process, and inside that process FAISS indexes must not be
searched while they are mutated. So every catalog write runs on one thread (`SingleWriter`),
one transaction at a time, and holds the exclusive side of a `ReadWriteLock` from the start of
its transaction until the derived indexes have followed the commit. Searches hold the shared
side for the whole question (index lookup + turning ids into patients), so an answer never
sees a half-applied commit and never names a patient whose vector was just removed.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ReadWriteLock:
    """Many readers or one writer. Reads are re-entrant per thread; a writer waits for readers.

    A waiting writer goes before new readers (so a steady stream of searches cannot starve
    it), but a thread that already reads may read again (so nested reads cannot deadlock).
    The writer thread may also read while it holds the exclusive side. When a writer lets go,
    the readers that were waiting for it go before the next writer (so writes queued back to
    back, e.g. the owner storing batches from several threads, cannot starve searches either).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._blocked_readers = 0  # readers waiting for the lock right now
        self._admit = 0  # readers still to let in before the next writer (those blocked when the last writer let go)

    def holds_read(self) -> bool:
        with self._cond:
            return threading.get_ident() in self._readers

    def describe_readers(self) -> str:
        """The threads holding the shared side now, by name: what a slow write's log line names
        ("" at once when nobody reads, the usual case: every write asks)."""
        with self._cond:
            idents = set(self._readers)
        if not idents:
            return ""
        names = {t.ident: t.name for t in threading.enumerate()}
        return ", ".join(sorted(names.get(i, str(i)) for i in idents))

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if me not in self._readers:
                blocked = False
                while (self._writer is not None and self._writer != me) or (
                        self._writers_waiting and self._writer != me and not self._admit):
                    if not blocked:
                        self._blocked_readers += 1
                        blocked = True
                    self._cond.wait()
                if blocked:
                    self._blocked_readers -= 1
                if self._admit and self._writer is None:
                    self._admit -= 1
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if me in self._readers:
                raise RuntimeError("a thread holding the read lock cannot take the write lock (it would deadlock)")
            self._writers_waiting += 1
            try:
                while (self._writer is not None and self._writer != me) or (
                        self._writer != me and (self._readers or (self._admit and self._blocked_readers))):
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
            self._writer_depth += 1
            self._admit = 0
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._writer = None
                    self._admit = self._blocked_readers
                self._cond.notify_all()


class SingleWriter:
    """A thread that runs submitted write functions one after another, in submission order.

    `run(fn)` blocks the caller until `fn` has run on the writer thread and returns its result
    (or raises its exception). Called from the writer thread itself (a write inside a write),
    `fn` runs inline. The thread starts on the first write and stops at `close()`.
    """

    def __init__(self, name: str = "catalog-writer") -> None:
        self._name = name
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def on_writer_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, fn: Callable[[], T]) -> T:
        if self.on_writer_thread():
            return fn()
        future: Future = Future()
        with self._start_lock:
            if self._closed:
                raise RuntimeError("the catalog writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put((fn, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
                future.set_exception(exc)

    def close(self) -> None:
        """Finish queued writes, then stop the thread."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._queue.put(None)
            thread.join()
