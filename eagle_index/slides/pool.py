"""Tile reading in worker processes, slides read ahead: the GPU feeder never waits on the GIL.

Why. Reader threads (tiling.py) share one interpreter with the thread that feeds the GPU: on a
16-core GPU node they stop scaling at ~900 tiles/s and the GPU idles half of every slide
(docs/benchmarks.md). Here each reader process opens a slide once (kept open for that slide's
next jobs) and reads + Canny-filters its share of the grid with tiling.py's own code
(`_Reader.read_job`, `keep_tiles`, `read_tiles`), so tiles are bit-identical to the threaded
reader on every reader path (generic and Aperio-like pyramids, DCT-scaled, plain images, DICOM).

Memory. Pixels travel through one shared-memory block cut into slots (never pickled): a job gets
a free slot when it is submitted and gives it back once the consumer has copied its kept tiles.
The slots (`read_buffer_mb`) bound what the pool holds, and so how far it can read ahead.

Overlap. `SlideStream` plans (opens, masks) and reads slides i+1 ... i+prefetch while the consumer
embeds slide i. Work is submitted in slide order (the current slide's jobs first), and a
priority task (the top-k re-read for Virchow2) waits for at most the jobs already submitted.

Failures. A slide that cannot be read fails alone (its SlideError names the file). A reader
process that dies (a crashing decoder) breaks the pool: it is restarted and the current slide is
read again alone; if it breaks the pool alone it fails, and the slides behind it are re-planned.

Leases (issue 24 item 3). A read can block for good (a hung NFS mount, a FIFO where OpenSlide
opens a file): the consumer waits for a slide's tiles at most its read lease
(`TilingSettings.read_lease`: a base plus seconds per GB of file, summed over every wait of that
slide). Past it the reader processes are killed (the blocked one cannot be reached otherwise) and
started afresh, the slide fails with "read did not finish within N s", and the slides behind it
are re-planned. A stream given a `stop` event raises `ReadInterrupted` within half a second of it
being set, from any wait, and kills a blocked read the same way, so an owner stops on SIGTERM.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from eagle_index.config import TilingSettings
from eagle_index.errors import SlideError
from eagle_index.slides.reader_tasks import (SLOT_TILES, SlidePlan, _close_task, _init_reader, _plan_task,
                                             _read_task, _tiles_task)
from eagle_index.slides.tiling import TileBatch, TileGrid

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a consumer waiting for tiles looks at its stop event
KILL_GRACE_S = 5.0  # close(): how long reader processes may take to finish their task before they are killed


def default_workers() -> int:
    """One reader process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _no_main_module:
    """Hide `__main__` while reader processes start, so they do not import the caller's script."""

    def __enter__(self):
        import types

        self._main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")

    def __exit__(self, *exc):
        sys.modules["__main__"] = self._main


# -- the parent side -----------------------------------------------------------------------------
class ReaderPool:
    """Reader processes and the shared slots their tiles come back in. Close it (or use `with`).

    Slots are handed out with the pool's generation: after a restart (a reader process died),
    slots taken before it are free again, and handing one back late changes nothing.
    """

    def __init__(self, workers: int | None = None, tile_px: int = 224, buffer_mb: int = 512):
        self.workers = workers or default_workers()
        self.tile_px = tile_px
        slot_bytes = SLOT_TILES * tile_px * tile_px * 3
        # enough slots to keep every process busy with work queued behind it, within the memory cap;
        # `reserve` of them only priority reads (the top-k re-read) may take, so they never wait for
        # tiles read ahead for later slides
        self.reserve = self.workers
        self.n_slots = max(2 * self.workers + 2, min(5 * self.workers + 4, (buffer_mb << 20) // slot_bytes))
        self._shape = (self.n_slots, SLOT_TILES, tile_px, tile_px, 3)
        self._shm = shared_memory.SharedMemory(create=True, size=int(np.prod(self._shape)))
        self.slots = np.ndarray(self._shape, dtype=np.uint8, buffer=self._shm.buf)
        self._free = list(range(self.n_slots))
        self._lock = threading.Lock()  # streams of several threads (a Ray actor's slides) share one pool
        self.generation = 0
        self.busy = multiprocessing.get_context("forkserver").Value("d", 0.0)  # seconds in tasks, all processes
        self._closed = False
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        """Start every reader process now, from a forkserver (never a fork of this process: it may
        hold CUDA, Ray's threads, a server's locks) that has imported the readers' modules once."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["eagle_index.slides.pool", "eagle_index.slides.reader_tasks", "eagle_index.slides.tiling", "openslide"])
        executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_reader,
                                       initargs=(self._shm.name, self._shape, self.busy, os.getpid()))
        # Processes start lazily, one per submit, and a started process would re-run this program's
        # main script (a CLI, a Ray worker, pytest): start them all here with no main to re-run.
        with _no_main_module():
            started = [executor.submit(os.getpid) for _ in range(self.workers)]
        wait(started)
        return executor

    def restart(self, generation: int, kill: bool = False) -> None:
        """A reader process died (the executor killed the others): start fresh processes, once
        per breakage however many streams noticed it. With `kill` (a read past its lease, or
        abandoned on stop), every reader process is killed first - a process blocked in a read
        never finishes its task - and fresh ones start with the next submit."""
        with self._lock:
            if generation != self.generation or self._closed:
                return
            if kill:
                if self._executor is not None:
                    _kill_executor(self._executor)
                self._executor = None
            else:
                if self._executor is not None:
                    self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = self._start()
            self._free = list(range(self.n_slots))
            self.generation += 1

    def submit(self, fn, *args) -> Future:
        """Submit a task; on a broken pool, a future that already holds BrokenProcessPool (so
        every caller handles a dead reader in one place: where it reads the result)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the reader pool is closed")
            if self._executor is None:  # killed after a lease: fresh processes
                self._executor = self._start()
            executor = self._executor
        try:
            return executor.submit(fn, *args)
        except BrokenProcessPool as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def take_slot(self, priority: bool = False) -> tuple[int, int] | None:
        """(slot, generation), or None when none is free (for ordinary reads: beyond the reserve)."""
        with self._lock:
            if len(self._free) > (0 if priority else self.reserve):
                return self._free.pop(), self.generation
            return None

    def give_slot(self, token: tuple[int, int]) -> None:
        slot, generation = token
        with self._lock:
            if generation == self.generation:
                self._free.append(slot)

    def close(self) -> None:
        """Stop the reader processes (one still in a task after KILL_GRACE_S, e.g. blocked in a read,
        is killed) and free the shared memory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            processes = list((getattr(executor, "_processes", None) or {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + KILL_GRACE_S
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
            if any(p.is_alive() for p in processes):
                _kill_executor(executor)
            executor.shutdown(wait=True)
        self.slots = None
        self._shm.close()
        self._shm.unlink()

    def __enter__(self) -> "ReaderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stream(self, items: Iterable, settings: TilingSettings, prefetch: int = 2, use_mask: bool = True,
               stop: threading.Event | None = None) -> "SlideStream":
        return SlideStream(self, items, settings, prefetch, use_mask, stop)


def _kill_executor(executor: ProcessPoolExecutor) -> None:
    """Kill every process of `executor` (its futures end with BrokenProcessPool) and let it go."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):
            pass
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            process.join(KILL_GRACE_S)
        except (OSError, ValueError, AssertionError):
            pass


_shared: ReaderPool | None = None
_shared_lock = threading.Lock()


def shared_pool(workers: int | None, tile_px: int, buffer_mb: int = 512) -> ReaderPool:
    """This process's reader pool (started on first use, closed at exit), so a daemon or a Ray
    actor pays the start-up of its reader processes once."""
    global _shared
    import atexit

    with _shared_lock:
        want = workers or default_workers()
        if _shared is not None and (_shared.workers != want or _shared.tile_px != tile_px):
            _shared.close()
            _shared = None
        if _shared is None:
            _shared = ReaderPool(want, tile_px, buffer_mb)
            atexit.register(close_shared_pool)
        return _shared


def close_shared_pool() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


class ReadRestart(Exception):
    """The pool broke under this slide and was restarted: read the slide again from the start."""


class ReadInterrupted(Exception):
    """The stream's stop event was set while it waited for tiles (an owner shutting down). Not a
    SlideError: the slide did nothing wrong, its job goes back to the queue."""


@dataclass
class _Work:
    """One slide in the stream's window: its plan, its read jobs, the ones submitted."""

    path: str
    mpp_override: float | None
    item: object
    plan_future: Future | None = None
    plan: SlidePlan | None = None
    lease: float = 0.0  # seconds the consumer may wait for this slide's reads (TilingSettings.read_lease)
    waited: float = 0.0  # seconds it has waited so far
    next_job: int = 0
    submitted: collections.deque = field(default_factory=collections.deque)  # (future, slot token, positions)


def _settle(future: Future, pool: "ReaderPool", token: tuple[int, int]) -> None:
    """Cancel `future`, or wait until its process is done with its slot; one still under way after
    KILL_GRACE_S (a blocked read) gets the reader processes killed, which frees every slot."""
    if not future.cancel():
        try:
            future.exception(timeout=KILL_GRACE_S)
        except TimeoutError:
            log.warning("a read was still under way %.0f s after its slide was given up; killing the reader processes",
                        KILL_GRACE_S)
            pool.restart(token[1], kill=True)
        except Exception:  # noqa: BLE001 - cancelled, broken: either way the slot is free (Ctrl-C goes through)
            pass


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def lease_error(path: str, lease: float) -> SlideError:
    """The one-line failure of a slide whose read outlived its lease."""
    return SlideError(f"{path}: read did not finish within {round(lease, 1):g} s (read lease: EAGLE_INDEX_READ_LEASE_S "
                      "plus EAGLE_INDEX_READ_LEASE_PER_GB_S per GB); the blocked reader processes were killed and "
                      "restarted (a hung file system, or a FIFO where a file belongs?)")


class SlideStream:
    """Slides in order, each read by the pool while the ones before it are consumed.

    `items` yields `(path, mpp_override, anything)`; iterating gives a `PooledSlide` per item,
    valid until the next one. A slide's own error is raised by its `plan` / `tissue_batches`.
    """

    def __init__(self, pool: ReaderPool, items: Iterable, settings: TilingSettings, prefetch: int = 2, use_mask: bool = True,
                 stop: threading.Event | None = None):
        self.pool = pool
        self.stop = stop
        self.settings = settings
        self.prefetch = max(0, prefetch)
        self.use_mask = use_mask
        self._items = iter(items)
        self._window: collections.deque[_Work] = collections.deque()
        self._alone = False  # after a broken pool: read the current slide with nothing ahead of it
        self._exhausted = False
        self._max_inflight = 3 * pool.workers  # tasks submitted but unfinished: each process has work queued

    def __iter__(self) -> Iterator["PooledSlide"]:
        try:
            while True:
                self._fill_window()
                if not self._window:
                    return
                yield PooledSlide(self, self._window[0])
                self._release(self._window.popleft())
                self._alone = False
        finally:
            self.close()

    def close(self) -> None:
        while self._window:
            self._release(self._window.popleft())

    def _fill_window(self) -> None:
        depth = 1 if self._alone else 1 + self.prefetch
        while not self._exhausted and len(self._window) < depth:
            try:
                path, mpp_override, item = next(self._items)
            except StopIteration:
                self._exhausted = True
                break
            self._window.append(_Work(str(path), mpp_override, item, lease=self.settings.read_lease(_file_size(str(path)))))
        self._pump()

    def _release(self, work: _Work) -> None:
        while work.submitted:
            future, token, _ = work.submitted.popleft()
            _settle(future, self.pool, token)
            self.pool.give_slot(token)
        if work.plan_future is not None:
            work.plan_future.cancel()
        try:
            self.pool.submit(_close_task, work.path)  # reader processes drop their handle of it
        except (RuntimeError, BrokenProcessPool):
            pass

    def _inflight(self) -> int:
        return sum(1 for w in self._window for f, _, _ in w.submitted if not f.done()) + sum(
            1 for w in self._window if w.plan_future is not None and not w.plan_future.done())

    def _pump(self) -> None:
        """Submit plans and read jobs in slide order while slots and the in-flight bound allow.
        A later slide's jobs are submitted only when every job of the slides before it is."""
        window = list(self._window)[: 1 if self._alone else None]
        for work in window:  # every slide of the window is planned (opened, masked) at once, ahead of reads
            if work.plan_future is None:
                work.plan_future = self.pool.submit(_plan_task, work.path, work.mpp_override, self.settings, self.use_mask)
        budget = self._max_inflight - self._inflight()
        for work in window:
            if work.plan is None and work.plan_future.done() and not work.plan_future.cancelled() \
                    and work.plan_future.exception() is None:
                work.plan = work.plan_future.result()
            if work.plan is None:
                return
            plan = work.plan
            while work.next_job < len(plan.jobs):
                if budget <= 0:
                    return
                token = self.pool.take_slot()
                if token is None:
                    return
                positions = plan.jobs[work.next_job]
                future = self.pool.submit(_read_task, token[0], work.path, work.mpp_override, self.settings, plan.level,
                                          plan.grid.level_box_px, plan.lx[positions], plan.ly[positions], True)
                work.submitted.append((future, token, positions))
                work.next_job += 1
                budget -= 1

    def _wait(self, future: Future, work: _Work) -> None:
        """Wait for `future` (a read of `work`), submitting the window's next work whenever any task
        finishes, so the reader processes never run dry behind a slow head-of-line job. Counts
        the wait into `work`'s lease (SlideError past it) and looks at the stop event."""
        self._pump()
        while not future.done():
            self._check(work)
            busy = [f for w in self._window for f, _, _ in w.submitted if not f.done()]
            busy += [w.plan_future for w in self._window if w.plan is None and w.plan_future is not None
                     and not w.plan_future.done()]
            t0 = time.monotonic()
            wait(busy or [future], timeout=min(POLL_S, max(0.0, work.lease - work.waited)), return_when=FIRST_COMPLETED)
            work.waited += time.monotonic() - t0
            self._pump()

    def _check(self, work: _Work) -> None:
        """Raise ReadInterrupted once `stop` is set, the lease's SlideError once `work` has waited
        its lease; either way a read still under way is killed with the reader processes."""
        if self.stop is not None and self.stop.is_set():
            self._abandon()
            raise ReadInterrupted(work.path)
        if work.waited >= work.lease:
            log.warning("%s: read did not finish within %.1f s; killing the reader processes", work.path, work.lease)
            self._abandon()
            raise lease_error(work.path, work.lease)

    def _abandon(self) -> None:
        """Kill the reader processes if a task of this window is still under way (the slides of the
        window are planned again on fresh processes)."""
        running = [f for w in self._window for f, _, _ in w.submitted if not f.done()]
        running += [w.plan_future for w in self._window if w.plan_future is not None and not w.plan_future.done()]
        if not running:
            return
        generation = self.pool.generation
        for other in self._window:
            other.submitted.clear()
            other.plan_future, other.plan, other.next_job = None, None, 0
        self.pool.restart(generation, kill=True)
        self._alone = False

    def _broken(self, work: _Work) -> None:
        """A reader process died: restart the pool; the current slide is read again, alone.
        Raises SlideError if it broke the pool while read alone (it is the culprit)."""
        generation = self.pool.generation
        for other in self._window:
            other.submitted.clear()
            other.plan_future, other.plan, other.next_job = None, None, 0
        self.pool.restart(generation)
        if self._alone:
            raise SlideError(f"{work.path}: a reader process died reading this slide (corrupt file?)")
        log.warning("a reader process died while %s was read; reading it again alone", work.path)
        self._alone = True
        raise ReadRestart(work.path)


class PooledSlide:
    """One slide of a `SlideStream`: its plan, its tissue tiles in grid order, tiles by µm.

    Any method may raise `ReadRestart` (read the slide again from the start) or the slide's
    `SlideError`."""

    def __init__(self, stream: SlideStream, work: _Work):
        self._stream = stream
        self._work = work
        self.path = Path(work.path)
        self.item = work.item

    @property
    def plan(self) -> SlidePlan:
        stream, work = self._stream, self._work
        while work.plan is None:
            if work.plan_future is None:
                stream._pump()
            stream._wait(work.plan_future, work)
            try:
                work.plan = work.plan_future.result()
            except BrokenProcessPool:
                stream._broken(work)
        return work.plan

    def tissue_batches(self, batch_size: int) -> Iterator[TileBatch]:
        """The slide's tissue tiles (Canny rule) in grid order as batches; `index` counts kept
        tiles, as `tiling.iter_tissue_batches` gives them."""
        plan = self.plan
        stream, work, grid = self._stream, self._work, plan.grid
        tile = grid.tile_px
        out = np.empty((batch_size, tile, tile, 3), np.uint8)
        pos_buf = np.empty(batch_size, np.int64)
        filled = emitted = 0
        for _ in range(len(plan.jobs)):
            if not work.submitted:
                stream._pump()
            future, token, positions = work.submitted[0]
            stream._wait(future, work)
            try:
                keep = future.result()
            except BrokenProcessPool:
                stream._broken(work)
            rows = np.flatnonzero(keep)
            images = stream.pool.slots[token[0]]
            src = 0
            while src < len(rows):
                n = min(batch_size - filled, len(rows) - src)
                out[filled:filled + n] = images[rows[src:src + n]]
                pos_buf[filled:filled + n] = positions[rows[src:src + n]]
                filled, src = filled + n, src + n
                if filled == batch_size:
                    yield _batch(grid, out, pos_buf, filled, emitted)
                    emitted += filled
                    filled, out = 0, np.empty_like(out)
            work.submitted.popleft()
            stream.pool.give_slot(token)
            stream._pump()
        if filled:
            yield _batch(grid, out[:filled], pos_buf, filled, emitted)

    def read_tiles(self, x_um, y_um) -> np.ndarray:
        """Tiles at µm coordinates exactly as `tiling.read_tiles` gives them (the Virchow2 re-read),
        spread over the reader processes ahead of any read-ahead work."""
        try:
            return self.read_tiles_async(x_um, y_um).result()
        except BrokenProcessPool:
            self._stream._broken(self._work)
            raise  # pragma: no cover - _broken raises

    def read_tiles_async(self, x_um, y_um) -> "PendingTiles":
        """Start the re-read; `result()` of what it returns waits for the tiles. The slide's
        handle may be moved past meanwhile (the reads name the file, not the handle)."""
        stream, work = self._stream, self._work
        x_um, y_um = np.atleast_1d(x_um), np.atleast_1d(y_um)
        tile = self.plan.grid.tile_px
        pending = PendingTiles(stream.pool, np.empty((len(x_um), tile, tile, 3), np.uint8), work.path, work.lease, stream.stop)
        chunk = max(1, min(SLOT_TILES, -(-len(x_um) // stream.pool.workers)))
        try:
            for start in range(0, len(x_um), chunk):
                token = stream.pool.take_slot(priority=True)
                while token is None:  # another stream holds the reserve: wait for one of ours or theirs
                    if not pending.collect_one():
                        busy = [f for w in stream._window for f, _, _ in w.submitted if not f.done()]
                        if busy:
                            wait(busy, return_when=FIRST_COMPLETED)
                    token = stream.pool.take_slot(priority=True)
                sl = slice(start, start + chunk)
                future = stream.pool.submit(_tiles_task, token[0], work.path, work.mpp_override, stream.settings,
                                            x_um[sl], y_um[sl])
                pending.chunks.append((future, token, sl))
        except BaseException:
            pending.cancel()
            raise
        return pending


class PendingTiles:
    """Tiles the reader processes are reading into priority slots; `result()` collects them."""

    def __init__(self, pool: ReaderPool, out: np.ndarray, path: str = "", lease: float = float("inf"),
                 stop: threading.Event | None = None):
        self.pool, self.out = pool, out
        self.path, self.lease, self.stop, self.waited = path, lease, stop, 0.0  # the slide's lease, as in SlideStream
        self.chunks: collections.deque = collections.deque()  # (future, slot token, slice of out)

    def _result(self, future: Future, token: tuple[int, int]):
        """`future.result()` within the lease, watching the stop event (see SlideStream._check)."""
        while not future.done():
            interrupted = self.stop is not None and self.stop.is_set()
            if interrupted or self.waited >= self.lease:
                self.pool.restart(token[1], kill=True)
                if interrupted:
                    raise ReadInterrupted(self.path)
                log.warning("%s: top-tile read did not finish within %.1f s; killing the reader processes", self.path, self.lease)
                raise lease_error(self.path, self.lease)
            t0 = time.monotonic()
            wait([future], timeout=min(POLL_S, max(0.0, self.lease - self.waited)))
            self.waited += time.monotonic() - t0
        return future.result()

    def collect_one(self) -> bool:
        """Copy the oldest chunk out of its slot (waiting for it); False if none is left."""
        if not self.chunks:
            return False
        future, token, sl = self.chunks.popleft()
        try:
            n = self._result(future, token)
            self.out[sl] = self.pool.slots[token[0], :n]
        except BaseException:
            self.cancel()
            raise
        finally:
            self.pool.give_slot(token)
        return True

    def result(self) -> np.ndarray:
        """The tiles; raises the slide's SlideError, or BrokenProcessPool if a reader process died."""
        while self.collect_one():
            pass
        return self.out

    def cancel(self) -> None:
        while self.chunks:
            future, token, _ = self.chunks.popleft()
            _settle(future, self.pool, token)
            self.pool.give_slot(token)


def _batch(grid: TileGrid, images: np.ndarray, pos_buf: np.ndarray, n: int, emitted: int) -> TileBatch:
    pos = pos_buf[:n].copy()
    return TileBatch(images=images[:n], index=np.arange(emitted, emitted + n, dtype=np.int64),
                     x_px=grid.x_px[pos], y_px=grid.y_px[pos], x_um=grid.x_um[pos], y_um=grid.y_um[pos])


def pooled_tissue_grid(path, mpp_override: float | None, settings: TilingSettings, candidates: TileGrid) -> TileGrid:
    """`tiling.tissue_grid` with the reads and the Canny rule in this process's reader pool."""
    pool = shared_pool(settings.read_workers, settings.tile_px, settings.read_buffer_mb)
    keep = np.zeros(len(candidates), dtype=bool)
    where = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(candidates.x_px, candidates.y_px))}
    for handle in pool.stream([(path, mpp_override, None)], settings, prefetch=0):
        for batch in handle.tissue_batches(256):
            keep[[where[(int(x), int(y))] for x, y in zip(batch.x_px, batch.y_px)]] = True
    return candidates.subset(keep)
