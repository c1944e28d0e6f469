"""What a cosine score means on this archive: its percentile among random pairs of patients.

A score of 0.8 is "close" on one archive and ordinary on another (EAGLE vectors of one organ sit in a
narrow cone). So each hit carries the share of patient pairs of the same vector set that score lower.
The reference is every pair among a seeded sample of at most `SAMPLE` patients (1,000 → about half a million
pairs), recomputed only when the set has grown or shrunk by more than `REFRESH` since (a daemon bumps the
set's generation with every slide; the distribution does not move with one patient). The reference is
also kept in a file beside the set's index (`cache_dir`), under the same rule, so a one-shot CLI search
reads 2 MB instead of loading 1,000 vectors and sorting half a million pairs (issue 20 item 4).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE = 1_000
REFRESH = 0.05


def pair_scores(matrix: np.ndarray) -> np.ndarray:
    """Sorted cosine scores (float32) of every pair of distinct rows; empty with fewer than two rows."""
    if len(matrix) < 2:
        return np.zeros(0, dtype=np.float32)
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1.0)
    sims = rows @ rows.T
    upper = sims[np.triu_indices(len(rows), k=1)]
    return np.sort(upper.astype(np.float32))


def percentile(reference: np.ndarray, score: float) -> float | None:
    """Percent of reference pairs scoring strictly lower than `score` (None without a reference)."""
    if len(reference) == 0:
        return None
    return round(100.0 * float(np.searchsorted(reference, np.float32(score), side="left")) / len(reference), 1)


class ScoreContext:
    """The reference pair scores of each vector set, sampled from the catalog and kept while the set's size holds."""

    def __init__(self, catalog, sample: int = SAMPLE, seed: int = 0, cache_dir: Path | None = None):
        self.catalog = catalog
        self.sample = sample
        self.seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: dict[tuple[str, str], tuple[int, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _holds(self, cached: tuple[int, np.ndarray] | None, count: int) -> bool:
        """A reference made when the set had `cached[0]` vectors still stands for `count`."""
        return cached is not None and abs(count - cached[0]) <= REFRESH * max(cached[0], 1) and (
            count == cached[0] or cached[0] >= self.sample)

    def _file(self, kind: str, signature: str) -> Path | None:
        if self.cache_dir is None:
            return None
        from eagle_index.store.vectors import index_basename

        return self.cache_dir / f"{index_basename(kind, signature)}.pairs-{self.sample}-{self.seed}.npz"

    def _read(self, path: Path | None) -> tuple[int, np.ndarray] | None:
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as stored:
                return int(stored["count"]), np.asarray(stored["scores"], dtype=np.float32)
        except (OSError, ValueError, KeyError) as exc:  # torn or foreign: computed again and replaced
            log.warning("%s: unreadable score reference (%s); computing it again", path, exc)
            return None

    def _write(self, path: Path | None, count: int, scores: np.ndarray) -> None:
        if path is None:
            return
        from eagle_index.atomic import atomic_path

        try:
            with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as out:
                np.savez(out, count=np.int64(count), scores=scores)
        except OSError as exc:  # a read-only folder: the reference is only kept in memory
            log.warning("%s: cannot keep the score reference (%s)", path, exc)

    def reference(self, kind: str, signature: str) -> np.ndarray:
        ids = self.catalog.vector_ids(kind, signature)
        key = (kind, signature)
        with self._lock:
            cached = self._cache.get(key)
        if self._holds(cached, len(ids)):
            return cached[1]
        path = self._file(kind, signature)
        stored = self._read(path)
        if self._holds(stored, len(ids)):
            with self._lock:
                self._cache[key] = stored
            return stored[1]
        chosen = ids
        if len(ids) > self.sample:
            chosen = np.sort(np.random.default_rng(self.seed).choice(ids, self.sample, replace=False))
        _, matrix = self.catalog.load_vectors(kind, signature, patient_ids=chosen)
        scores = pair_scores(matrix)
        with self._lock:
            self._cache[key] = (len(ids), scores)
        self._write(path, len(ids), scores)
        return scores

    def percentiles(self, kind: str, signature: str, scores) -> list[float | None]:
        reference = self.reference(kind, signature)
        return [percentile(reference, float(s)) for s in scores]
