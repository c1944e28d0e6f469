"""What a reader process of `slides/pool.py` runs: its globals (the shared slots, the slides it keeps
open), the tasks the parent submits (plan a slide, read a job's tiles, re-read the top tiles, close a
slide) and the watch that ends it with its owner. Kept apart from the parent's scheduling
(`ReaderPool`, `SlideStream`) so each side reads on its own; the tasks reuse tiling.py's own code, so
tiles are bit-identical to the threaded reader.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from eagle_index.config import TilingSettings
from eagle_index.slides.tiling import TileGrid

SLOT_TILES = 32  # tiles per shared-memory slot: a read job never holds more
OPEN_SLIDES = 4  # slides a reader process keeps open (the current one and those read ahead)

_slots: np.ndarray | None = None  # (n_slots, SLOT_TILES, tile_px, tile_px, 3) view of the shared block
_shm: shared_memory.SharedMemory | None = None
_open: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()


_busy = None  # multiprocessing.Value: seconds all reader processes spent in tasks (benchmarks read it)


def _init_reader(shm_name: str, shape: tuple[int, ...], busy=None, owner: int | None = None) -> None:
    """Attach the shared block; leave Ctrl-C to the parent (it shuts the pool down); die with `owner`."""
    global _slots, _shm, _busy
    _busy = busy
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if owner is not None:
        _exit_with(owner)
    import cv2

    cv2.setNumThreads(1)  # one process per core already; same pixels either way
    # forkserver children share the parent's resource tracker: the parent alone unlinks the block
    _shm = shared_memory.SharedMemory(name=shm_name)
    _slots = np.ndarray(shape, dtype=np.uint8, buffer=_shm.buf)


def _exit_with(owner: int) -> None:
    """End this reader process when `owner` (the process whose pool it serves) exits, however it
    ends (issue 24: a SIGKILLed daemon left its readers, the forkserver and the resource tracker
    behind for good: each holds pipes that keep the others waiting, and a read blocked in a hung
    file never returns). A thread waits on the owner's pidfd; `os._exit` ends the process even
    while its task is blocked in a read."""
    import select

    try:
        fd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): look once a second
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            import time as clock

            while True:
                try:
                    os.kill(owner, 0)
                except ProcessLookupError:
                    break
                except OSError:
                    pass
                clock.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def _slide(path: str, mpp_override: float | None, settings: TilingSettings):
    """The open slide (and its readers by level), opened once per reader process."""
    from eagle_index.slides.reader import open_slide

    key = (path, mpp_override, settings)
    stamp = _stamp(path)  # a file rewritten at the same path (issue 24) is opened afresh, never read through stale IFDs
    entry = _open.get(key)
    if entry is not None and entry[2] != stamp:
        _forget(path)
        entry = None
    if entry is None:
        while len(_open) >= OPEN_SLIDES:
            _, (old, *_) = _open.popitem(last=False)
            old.close()
        entry = _open[key] = (open_slide(path, mpp_override=mpp_override, settings=settings), {}, stamp)
    else:
        _open.move_to_end(key)
    return entry[:2]


def _stamp(path: str) -> tuple | None:
    """The file's identity and state: inode, size, mtime, ctime (ctime moves even under `cp -p`)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _forget(path: str) -> None:
    for key in [k for k in _open if k[0] == path]:
        _open.pop(key)[0].close()


@dataclass(frozen=True)
class SlidePlan:
    """What the consumer needs of a slide before its tiles: the candidate grid and the metadata."""

    grid: TileGrid
    jobs: tuple[np.ndarray, ...]  # positions in `grid` of each read job, in grid order
    lx: np.ndarray  # level origins of the grid's tiles
    ly: np.ndarray
    mpp: float
    mpp_source: str
    level: int
    width_px: int
    height_px: int
    format: str


def _plan_slide(path: str, mpp_override: float | None, settings: TilingSettings, use_mask: bool) -> SlidePlan:
    from eagle_index.slides.tiling import _plan_jobs, _Reader, candidate_grid

    try:
        slide, readers = _slide(path, mpp_override, settings)
        grid = candidate_grid(slide, settings, use_mask)
        reader = readers[(grid.level, grid.level_box_px)] = _Reader.make(slide, grid.level, grid.level_box_px, grid.tile_px, settings)
        lx, ly = reader.level_origin(grid.x_px, grid.y_px)
        jobs = []
        for job in _plan_jobs(reader, lx, ly) if len(grid) else []:
            jobs.extend(job[i:i + SLOT_TILES] for i in range(0, len(job), SLOT_TILES))  # crops are exact: see tiling.py
        return SlidePlan(grid, tuple(jobs), lx, ly, slide.mpp, slide.mpp_source, grid.level, slide.dimensions[0],
                         slide.dimensions[1], slide.format)
    except BaseException:
        _forget(path)
        raise


class _Timed:
    """A task whose wall time counts into the pool's busy seconds (pickled by its module name)."""

    def __init__(self, name: str, task):
        self.name, self.task = name, task

    def __call__(self, *args):
        import time

        started = time.perf_counter()
        try:
            return self.task(*args)
        finally:
            if _busy is not None:
                with _busy.get_lock():
                    _busy.value += time.perf_counter() - started

    def __reduce__(self):
        return (_task_named, (self.name,))


def _task_named(name: str) -> "_Timed":
    return globals()[name]


def _read_job(slot: int, path: str, mpp_override: float | None, settings: TilingSettings, level: int, box_px: int,
               lx: np.ndarray, ly: np.ndarray, canny: bool) -> np.ndarray | None:
    """Read tiles at level origins into `slot`; their Canny keep flags (or None)."""
    from eagle_index.slides.tiling import _Reader
    from eagle_index.slides.tissue import keep_tiles

    try:
        slide, readers = _slide(path, mpp_override, settings)
        reader = readers.get((level, box_px))
        if reader is None:
            reader = readers[(level, box_px)] = _Reader.make(slide, level, box_px, settings.tile_px, settings)
        images = reader.read_job(lx, ly)
        _slots[slot, : len(lx)] = images
        return keep_tiles(images, settings) if canny else None
    except BaseException:
        _forget(path)
        raise


def _read_top_tiles(slot: int, path: str, mpp_override: float | None, settings: TilingSettings,
                x_um: np.ndarray, y_um: np.ndarray) -> int:
    """`tiling.read_tiles` (the Virchow2 re-read) into `slot`."""
    from eagle_index.slides.tiling import read_tiles

    try:
        slide, _ = _slide(path, mpp_override, settings)
        _slots[slot, : len(x_um)] = read_tiles(slide, x_um, y_um, settings)
        return len(x_um)
    except BaseException:
        _forget(path)
        raise


# what the reader processes run, each counted into the pool's busy seconds
_plan_task = _Timed("_plan_task", _plan_slide)
_read_task = _Timed("_read_task", _read_job)
_tiles_task = _Timed("_tiles_task", _read_top_tiles)


def _close_task(path: str) -> None:
    _forget(path)
