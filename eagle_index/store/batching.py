"""Gathering single-query FAISS searches that arrive together into one call (issue 20 item 1).

FAISS answers a batch of queries far faster per query than the same queries one call each
(one pass over the coarse lists and the fast-scan codes for several queries, OpenMP across
them). `SearchBatcher` is used by `DerivedIndex.search_loaded` (store/derived_index.py), so
patient searches, region (tile) searches, the web API's threads and CLI commands sent through
a server all go through it. Its rules:

- Only compatible queries share a call: the key is the FAISS index object (a loaded set; a
  rebuild swaps in a new object) and `k`; the search-time parameters (nprobe, efSearch,
  re-ranking depth) live on that object. A query with its own `SearchParameters` (an id
  selector, say) or several rows is searched alone, as are indexes whose FAISS kernel for one
  query differs from the one for several, and HNSW indexes, where a batch gains nothing (`batchable`).
- A query that finds no search of its key running goes at once (a lone CLI search waits for
  nothing). One that arrives while a search of its key runs opens a batch, or joins the open
  one, and the batch is searched `window_s` (EAGLE_INDEX_SEARCH_BATCH_MS, default 1 ms) after it
  opened, or as soon as it is full (`max_batch`). `window_s` 0 turns gathering off.
- Every caller gets its own row of the batched answer: FAISS searches each query of a batch
  independently (per-query heaps, per-query look-up tables, exact re-ranking per query), and
  `batchable` keeps out the case where it does not (see there), so each answer is the one the
  query gets alone (tests/test_search_batching.py checks this for every index type and filter).
- Callers hold `catalog.reading()` while they wait: the writer cannot change the index while a
  batch of it is gathered or searched, and a batch only holds queries of threads that are all
  inside their read sections at once, so all of them see the same generation.

`calls` and `queries` count FAISS calls and the queries they answered. `hold_for(n)` is a test
hook that makes gathering deterministic instead of a matter of timing: n threads take part, each
calls `leave()` when it is done; every single query then waits in a batch (no deadline, no lone
path) until each taking-part thread still active waits in one, and all open batches are searched
at that moment. So queries that can be gathered are, and a thread whose next search depends on
the answer of its last one (over-fetching) is waited for.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

DEFAULT_MAX_BATCH = 64
DB_PARALLEL_MIN = 10_000  # FAISS (1.12+) scans a flat set this large with several threads for a lone query
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def search_rows(index, rows: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """One FAISS call for a batch. The server's request threads run FAISS with one OpenMP thread
    (server.py: a single query is too small to split); a batch of several queries is not, so its
    call gets up to one thread per query and core, on the leader's thread only. Each query keeps
    the kernel it has alone: FAISS's database-parallel scan needs fewer queries than threads,
    which this never gives."""
    x = np.ascontiguousarray(np.vstack(rows), dtype=np.float32)
    if len(rows) > 1:
        import faiss

        before = faiss.omp_get_max_threads()
        threads = min(len(rows), CORES)
        if threads > before:
            faiss.omp_set_num_threads(threads)
            try:
                return index.search(x, k)
            finally:
                faiss.omp_set_num_threads(before)
    return index.search(x, k)


def _faiss_limits() -> tuple[int, int]:
    """(FAISS's BLAS threshold in query floats, its OpenMP threads)."""
    import faiss

    return int(faiss.cvar.distance_compute_blas_threshold), int(faiss.omp_get_max_threads())


def batchable(index, dim: int) -> int:
    """How many single queries of `index` may share one FAISS call with the same per-query answers
    as alone (1: none may).

    FAISS's exhaustive inner product (a flat index, and IVF's coarse quantizer) takes one of three
    kernels: one query against a large set is split across threads by database blocks (BLAS);
    fewer than `distance_compute_blas_threshold / dim` queries are scored one by one (SIMD dot
    products); more go through BLAS tiles. The scores agree to ~1e-7 but not bit for bit, so
    only batches that take the lone query's kernel are allowed: sets (or coarse lists) below the
    database-parallel size, batches below the BLAS threshold (the re-ranking step scores each query
    on its own). HNSW indexes are not batched: FAISS walks each query's graph on its own, so a batch
    saves nothing and serializes queries the request threads would run side by side (measured:
    0.61x the queries/s of unbatched at 20,000 vectors, 16 threads; docs/benchmarks.md).
    """
    import faiss

    threshold, threads = _faiss_limits()
    below_blas = max(1, (threshold - 1) // max(dim, 1))
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.base_index)
    if isinstance(inner, faiss.IndexIVF):
        exhaustive_over = int(inner.nlist)
    elif isinstance(inner, faiss.IndexHNSW):
        return 1
    elif isinstance(inner, faiss.IndexFlat):
        exhaustive_over = int(inner.ntotal)
    else:
        return 1
    if threads > 1 and exhaustive_over >= max(DB_PARALLEL_MIN, threads * 1024):
        return 1
    return below_blas


class _Batch:
    __slots__ = ("index", "rows", "done", "release", "result", "error")

    def __init__(self, index):
        self.index = index
        self.rows: list[np.ndarray] = []
        self.done = False
        self.release = False  # hold_for: every active thread waits in a batch
        self.result: tuple[np.ndarray, np.ndarray] | None = None
        self.error: BaseException | None = None


class SearchBatcher:
    """Gathers single-row searches of one FAISS index with one `k` into one `index.search` call."""

    def __init__(self, window_s: float, max_batch: int = DEFAULT_MAX_BATCH):
        self.window_s = max(0.0, float(window_s))
        self.max_batch = max(1, int(max_batch))
        self._cond = threading.Condition()
        self._open: dict[tuple, _Batch] = {}
        self._running: dict[tuple, int] = {}
        self.calls = 0
        self.queries = 0
        self._active: int | None = None  # hold_for: threads taking part and not done
        self._parked = 0  # hold_for: single queries waiting in open batches

    @property
    def enabled(self) -> bool:
        return self.window_s > 0 or self._active is not None

    # -- the test hook -----------------------------------------------------------------------------
    def hold_for(self, threads: int | None) -> None:
        """Test hook (module docstring): `threads` take part from now on; None ends it."""
        with self._cond:
            self._active = threads
            self._parked = 0
            self._release_if_all_wait()

    def leave(self) -> None:
        """Test hook: a taking-part thread is done (it searches no more)."""
        with self._cond:
            if self._active is not None:
                self._active -= 1
                self._release_if_all_wait()

    def _release_if_all_wait(self) -> None:
        if self._active is not None and self._parked >= self._active:
            for batch in self._open.values():
                batch.release = True
            # Counted out here, not when each leader wakes: a thread back from one released batch
            # must not count the rows of another whose leader has not run yet as still waiting.
            self._open.clear()
            self._parked = 0
            self._cond.notify_all()

    def stats(self) -> dict:
        with self._cond:
            return {"faiss_calls": self.calls, "queries": self.queries}

    def reset_stats(self) -> None:
        with self._cond:
            self.calls = self.queries = 0

    def direct(self, index, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """One FAISS call for these rows alone (counted)."""
        out = index.search(queries, k) if params is None else index.search(queries, k, params=params)
        with self._cond:
            self.calls += 1
            self.queries += len(queries)
        return out

    def search(self, index, query: np.ndarray, k: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [1, k] for one normalized query row, searched with the other rows of this
        index and k that arrive meanwhile; `limit` caps the batch (see `batchable`)."""
        limit = min(self.max_batch, limit or self.max_batch)
        if not self.enabled or limit <= 1:
            return self.direct(index, query, k)
        key = (id(index), int(k))
        hooked = self._active is not None
        with self._cond:
            batch = self._open.get(key)
            if batch is not None and batch.index is index and len(batch.rows) < limit and not batch.release:
                slot = len(batch.rows)
                batch.rows.append(query)
                if hooked:
                    self._parked += 1
                    self._release_if_all_wait()
                elif len(batch.rows) >= limit:
                    self._cond.notify_all()
                while not batch.done:
                    self._cond.wait()
                if batch.error is not None:
                    raise batch.error
                scores, ids = batch.result
                return scores[slot:slot + 1].copy(), ids[slot:slot + 1].copy()
            if self._running.get(key, 0) == 0 and not hooked:
                alone = True  # nothing of this key is being searched: no one to wait for
                self._running[key] = 1
            else:
                alone = False
                batch = _Batch(index)
                batch.rows.append(query)
                self._open[key] = batch
                if hooked:
                    self._parked += 1
                    self._release_if_all_wait()
        if alone:
            try:
                return index.search(query, k)
            finally:
                with self._cond:
                    self._done_running(key)
                    self.calls += 1
                    self.queries += 1
        return self._lead(key, batch, k, limit)

    def _lead(self, key, batch: _Batch, k: int, limit: int):
        with self._cond:
            deadline = time.monotonic() + self.window_s
            while len(batch.rows) < limit:
                if self._active is not None:
                    if batch.release:
                        break
                    self._cond.wait(60.0)  # a safety net only: the hook releases the batch
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._open.get(key) is batch:
                del self._open[key]
            batch.release = True
            self._running[key] = self._running.get(key, 0) + 1
            rows = list(batch.rows)
        try:
            batch.result = search_rows(batch.index, rows, k)
        except BaseException as exc:  # every caller of the batch gets it
            batch.error = exc
        with self._cond:
            self._done_running(key)
            self.calls += 1
            self.queries += len(rows)
            batch.done = True
            self._cond.notify_all()
        if batch.error is not None:
            raise batch.error
        scores, ids = batch.result
        return scores[:1].copy(), ids[:1].copy()

    def _done_running(self, key) -> None:
        left = self._running.get(key, 0) - 1
        if left > 0:
            self._running[key] = left
        else:
            self._running.pop(key, None)
