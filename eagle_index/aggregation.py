"""EAGLE aggregation: tile scores -> candidates -> patient vector. Pure numpy, no I/O.

Definitions (normative, see docs/pipeline.md):
- A tile's order key is (score descending, slide order, row-major tile index), where slide
  order is the position of the slide in the patient's slides sorted by slide name, and the
  row-major index orders tiles by (y_um, x_um). This breaks ties identically everywhere, so
  aggregating all slides at once and re-aggregating stored per-slide candidates agree.
- k = min(top_k, number of tiles of the patient).
- The patient vector is the plain mean of the k class tokens; the index L2-normalizes it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


def row_major_index(x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Rank of each tile in row-major order (y outer, x inner)."""
    order = np.lexsort((np.asarray(x_um), np.asarray(y_um)))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def top_k_rows(scores: np.ndarray, k: int, tile_index: np.ndarray | None = None) -> np.ndarray:
    """Rows of the k best tiles of one slide, best first, ties by row-major tile index."""
    scores = np.asarray(scores, dtype=np.float32)
    tile_index = np.arange(len(scores)) if tile_index is None else np.asarray(tile_index)
    order = np.lexsort((tile_index, -scores.astype(np.float64)))
    return order[: min(k, len(scores))]


@dataclass
class SlideCandidates:
    """One slide's top-k tiles: everything needed to re-aggregate its patient later."""

    slide_name: str
    tile_index: np.ndarray  # int64 (k,) row-major index within the slide
    x_um: np.ndarray
    y_um: np.ndarray
    scores: np.ndarray  # float32 (k,) raw CHIEF attention
    class_tokens: np.ndarray | None = None  # float32 (k, D) Virchow2 class tokens

    def __len__(self) -> int:
        return len(self.scores)


def slide_candidates(slide_name: str, scores, x_um, y_um, k: int) -> SlideCandidates:
    x_um, y_um = np.asarray(x_um, dtype=np.float64), np.asarray(y_um, dtype=np.float64)
    tile_index = row_major_index(x_um, y_um)
    rows = top_k_rows(scores, k, tile_index)
    return SlideCandidates(slide_name, tile_index[rows], x_um[rows], y_um[rows], np.asarray(scores, dtype=np.float32)[rows])


@dataclass(frozen=True)
class Selection:
    """The patient's top-k as (slide position in the sorted slide list, row in its candidates)."""

    slide: np.ndarray
    row: np.ndarray


def select_patient_tiles(candidates: list[SlideCandidates], k: int) -> Selection:
    """Top-k over the union of the slides' candidates with the documented tie order."""
    ordered = sorted(range(len(candidates)), key=lambda i: candidates[i].slide_name)
    slide_rank = {slide: rank for rank, slide in enumerate(ordered)}
    slides = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(candidates)]) if candidates else np.zeros(0, np.int64)
    if len(slides) == 0:
        return Selection(slides, slides)
    rows = np.concatenate([np.arange(len(c)) for c in candidates])
    scores = np.concatenate([c.scores for c in candidates]).astype(np.float64)
    tile_index = np.concatenate([c.tile_index for c in candidates])
    ranks = np.array([slide_rank[s] for s in slides])
    order = np.lexsort((tile_index, ranks, -scores))[: min(k, len(scores))]
    return Selection(slides[order], rows[order])


def eagle_patient_vector(candidates: list[SlideCandidates], k: int) -> tuple[np.ndarray, Selection]:
    """Raw (un-normalized) EAGLE vector: mean class token of the patient's top-k tiles."""
    selection = select_patient_tiles(candidates, k)
    if len(selection.slide) == 0:
        raise ValueError("patient has no tiles")
    tokens = np.stack([candidates[s].class_tokens[r] for s, r in zip(selection.slide, selection.row)])
    return tokens.astype(np.float64).mean(axis=0).astype(np.float32), selection


def attention_pooled(scores: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """CHIEF slide/patient embedding: softmax(raw attention) · features (float64 for stability).

    The product runs on one BLAS thread (`one_blas_thread`)."""
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    feats = np.asarray(feats, dtype=np.float64)
    with one_blas_thread():
        return (weights @ feats).astype(np.float32)


_blas_guard = threading.RLock()  # re-entrant: a block inside a block does not deadlock
_blas: list = []  # the threadpoolctl controller of the BLAS libraries, made on first use


@contextmanager
def one_blas_thread():
    """Run the block (a matrix-vector product) on one BLAS thread; concurrent blocks take turns.

    Why: OpenBLAS splits a (N x 768) product over its threads, and after each call the idle
    thread spins for a while waiting for more work. The owner aggregates a patient per stored
    slide, so on the 2-core owner that spinning thread took a third to a half of the process's CPU
    (issue 19 item 5; docs/benchmarks.md "Owner store rate"). On one thread the product of a
    3-slide patient (6,000 x 768) takes 1.2-1.3 ms; two are faster only while a core is idle,
    and slower (7-17 ms) on a busy machine, waiting for the second core. The thread count is process-wide (threadpoolctl has no
    per-thread limit, see also `probing.models.compute_threads`), so the lock keeps one block
    at a time and each restores what it found. Results: each output element is summed over the
    rows in the same order whatever the thread count when the threads' shares of the 768 (or
    1280) columns are whole kernel blocks, as with 2 threads here (tests/test_owner_store.py
    compares one thread with the library's default); in general one thread makes the vectors
    independent of the machine's core count."""
    with _blas_guard:
        if not _blas:
            _blas.append(_numpy_blas())
        with _blas[0].limit(limits=1):
            yield


def _numpy_blas():
    """A threadpoolctl controller of the BLAS library numpy calls: the one in numpy's wheel
    (`numpy.libs`) or in the folder numpy was built against; else (not found) every BLAS
    library. FAISS's own OpenBLAS, which batched searches use meanwhile, is left alone."""
    from pathlib import Path

    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    here = Path(np.__file__).resolve().parent
    folders = [here, here.parent / "numpy.libs"]
    try:
        folders.append(Path(np.show_config(mode="dicts")["Build Dependencies"]["blas"]["lib directory"]).resolve())
    except Exception:  # noqa: BLE001 - older numpy, or no such entry: the wheel's folders only
        pass
    mine = [lib.filepath for lib in blas.lib_controllers
            if any(Path(lib.filepath).resolve().is_relative_to(folder) for folder in folders)]
    return blas.select(filepath=mine) if mine else blas


def mean_pooled(feats: np.ndarray) -> np.ndarray:
    return np.asarray(feats, dtype=np.float64).mean(axis=0).astype(np.float32)
