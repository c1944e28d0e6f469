"""Scores of scattered fixed-point rows against one query: the lean index's re-ranking step.

Why a kernel: re-ranking 3,200 candidates of a 1280-d lean index reads 3,200 scattered 2.5 KB rows.
numpy gathers, widens and multiplies them in three passes per chunk (about 0.6 us a row here); the
row reads then wait on memory one after another. `row_scores` widens and multiplies in one pass and
walks eight rows side by side, so eight rows' memory reads are in flight at once: 3,200 rows of a
200,000-row map in 0.82 ms instead of 1.98 ms (docs/benchmarks.md). It is compiled by numba (installed
with umap-learn) on first use and cached on disk; without numba, the numpy path gives the same scores.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

NUMPY_CHUNK = 64  # rows gathered, widened and scored at a time by the numpy path (stays in cache)
_kernel = None  # the compiled kernel, or False once numba proved unavailable


def row_scores(rows: np.ndarray, slots: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float32 [len(slots)]: rows[slots] (int16 [N, D]) . query (float32 [D], the fixed-point scale
    folded in). Summation order differs from numpy's by float32 rounding only (about 1e-7)."""
    slots = np.ascontiguousarray(slots, np.int64)
    query = np.ascontiguousarray(query, np.float32)
    out = np.empty(len(slots), np.float32)
    kernel = _compiled()
    if kernel:
        kernel(rows, slots, query, out)
    else:
        numpy_row_scores(rows, slots, query, out)
    return out


def numpy_row_scores(rows: np.ndarray, slots: np.ndarray, query: np.ndarray, out: np.ndarray) -> None:
    """The reference path (and the fallback without numba)."""
    for start in range(0, len(slots), NUMPY_CHUNK):
        out[start:start + NUMPY_CHUNK] = rows[slots[start:start + NUMPY_CHUNK]].astype(np.float32) @ query


def prepare() -> bool:
    """Compile (or load from the disk cache) the kernel now rather than in the first search; True if it is in use."""
    return bool(_compiled())


def _compiled():
    global _kernel
    if _kernel is None:
        try:
            _kernel = _build_kernel()
        except Exception as exc:  # noqa: BLE001 - numba missing or unable to compile here: numpy gives the same scores
            log.info("re-ranking with numpy (numba kernel unavailable: %s)", exc)
            _kernel = False
    return _kernel


def _build_kernel():
    import numba

    return numba.njit(cache=True, fastmath=True, nogil=True)(eight_rows_at_a_time)


def eight_rows_at_a_time(rows, slots, query, out):  # pragma: no cover - run compiled (numba)
    """The kernel's source: eight rows' reads in flight, each widened and multiplied in one pass."""
    d = rows.shape[1]
    n = slots.shape[0]
    i = 0
    while i + 8 <= n:
        r0, r1, r2, r3 = rows[slots[i]], rows[slots[i + 1]], rows[slots[i + 2]], rows[slots[i + 3]]
        r4, r5, r6, r7 = rows[slots[i + 4]], rows[slots[i + 5]], rows[slots[i + 6]], rows[slots[i + 7]]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for j in range(d):
            qj = query[j]
            a0 += np.float32(r0[j]) * qj
            a1 += np.float32(r1[j]) * qj
            a2 += np.float32(r2[j]) * qj
            a3 += np.float32(r3[j]) * qj
            a4 += np.float32(r4[j]) * qj
            a5 += np.float32(r5[j]) * qj
            a6 += np.float32(r6[j]) * qj
            a7 += np.float32(r7[j]) * qj
        out[i], out[i + 1], out[i + 2], out[i + 3] = a0, a1, a2, a3
        out[i + 4], out[i + 5], out[i + 6], out[i + 7] = a4, a5, a6, a7
        i += 8
    while i < n:
        row = rows[slots[i]]
        acc = np.float32(0.0)
        for j in range(d):
            acc += np.float32(row[j]) * query[j]
        out[i] = acc
        i += 1


def top_k_by_score(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first, ties by id: what np.lexsort((ids, -scores))[:k] gives,
    without sorting all 3,200 candidates (a partition finds the k-th score; only those at or above it are sorted)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    if k < len(scores):
        kth = -np.partition(-scores, k - 1)[k - 1]
        keep = np.flatnonzero(scores >= kth)
    else:
        keep = np.arange(len(scores))
    return keep[np.lexsort((ids[keep], -scores[keep]))][:k]
