"""FAISS indexes derived from the catalog: one per (kind, signature), ids = patient ids.

Inner product over L2-normalized float32 vectors is cosine similarity. An index file is
saved atomically (temp file + rename) next to a small JSON sidecar that records the
catalog generation, count and a digest of the ids it was built from; on open, any
disagreement with the catalog (or a missing/corrupt file) triggers a rebuild from the
catalog, which is the source of truth.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eagle_index.atomic import atomic_path, atomic_write_text
from eagle_index.config import IndexSettings
from eagle_index.store.catalog import Catalog, VectorSetInfo
from eagle_index.store.validation import as_vector_matrix, l2_normalized

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
SAVE_AT_ONCE_BELOW = 50_000  # vectors: below this an index file is rewritten after every change
SAVE_INTERVAL_S = 60.0


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()


def index_basename(kind: str, signature: str) -> str:
    safe_kind = "".join(c if c.isalnum() or c in "-_" else "_" for c in kind)
    return f"{safe_kind}--{hashlib.sha256(signature.encode()).hexdigest()[:16]}"


INDEX_TYPES = ("flat", "ivf", "hnsw")
IVF_MIN_TRAIN_PER_LIST = 39  # below this k-means is unreliable (FAISS warns); such sets stay exact
IVF_MIN_LISTS, IVF_MAX_LISTS = 16, 65_536


def choose_index_type(settings: IndexSettings, count: int) -> str:
    if settings.kind != "auto":
        return settings.kind
    return "ivf" if count > settings.approximate_above else "flat"


def ivf_list_count(settings: IndexSettings, count: int) -> int:
    """Coarse (k-means) lists of an IVF index over `count` vectors: `ivf_nlist`, or about sqrt(count)."""
    return settings.ivf_nlist or int(np.clip(round(np.sqrt(max(count, 1))), IVF_MIN_LISTS, IVF_MAX_LISTS))


def pq_subquantizers(dim: int, dims_per_code: int) -> int:
    """The largest divisor of `dim` not above dim / dims_per_code (PQ needs equal sub-vectors)."""
    target = max(1, dim // dims_per_code)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def index_type_of(index) -> str:
    """'flat', 'ivf' or 'hnsw': what a FAISS index (IndexIDMap2-wrapped or not) actually is."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexRefine):
        inner = faiss.downcast_index(inner.base_index)
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    raise ValueError(f"unexpected FAISS index {type(inner).__name__}")


def build_faiss_index(index_type: str, dim: int, settings: IndexSettings, train: np.ndarray | None = None, count: int | None = None):
    """An empty (but trained) FAISS index with id mapping, for normalized vectors and inner product.

    "ivf" is an inverted file over about sqrt(N) k-means lists whose vectors are coded by
    4-bit fast-scan product quantization of the residuals, searched in `ivf_nprobe` lists,
    the best `ivf_refine_k_factor * k` candidates re-ranked with the exact float vectors (so
    scores are exact cosines). It is trained here on (a sample of) `train`, the normalized
    vectors about to be added; `count` is how many will be added (default len(train)).
    With too few vectors to train (or none given) an exact flat index is built instead:
    use `index_type_of` to record what was built.
    """
    import faiss

    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r} (one of {', '.join(INDEX_TYPES)})")
    if index_type == "ivf":
        n_train = 0 if train is None else len(train)
        nlist = ivf_list_count(settings, n_train if count is None else count)
        if n_train < IVF_MIN_TRAIN_PER_LIST * nlist:
            log.info("%d vectors are too few to train %d IVF lists: using an exact flat index", n_train, nlist)
            index_type = "flat"
    if index_type == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = settings.hnsw_ef_construction
        inner.hnsw.efSearch = settings.hnsw_ef_search
    else:
        m = pq_subquantizers(dim, settings.ivf_pq_dims_per_code)
        inner = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x4fsr,RFlat", faiss.METRIC_INNER_PRODUCT)
        sample_size = min(len(train), settings.ivf_train_per_list * nlist)
        if sample_size < len(train):
            rows = np.sort(np.random.default_rng(0).choice(len(train), sample_size, replace=False))
            sample = np.ascontiguousarray(train[rows], dtype=np.float32)
        else:
            sample = np.ascontiguousarray(train, dtype=np.float32)
        inner.train(sample)
    index = faiss.IndexIDMap2(inner)
    configure_search(index, settings)
    return index


def configure_search(index, settings: IndexSettings) -> None:
    """Apply the search-time settings (efSearch, nprobe, re-ranking depth) to a built or loaded index."""
    import faiss

    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        inner.k_factor = float(settings.ivf_refine_k_factor)
        inner = faiss.downcast_index(inner.base_index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(settings.ivf_nprobe, inner.nlist)
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = settings.hnsw_ef_search


def read_current_sidecar(index_path: Path, meta_path: Path, expected: dict, what: str,
                         logger: logging.Logger = log) -> dict | None:
    """An index file's JSON sidecar if both files exist and it records `expected`; else None (reason logged
    on `logger`, the caller's). Shared by the patient indexes and the tile indexes."""
    if not index_path.exists() or not meta_path.exists():
        logger.info("%s %s missing: rebuilding", what, index_path.name)
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("%s sidecar %s unreadable (%s): rebuilding", what, meta_path, exc)
        return None
    stale = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if stale:
        logger.info("%s %s stale %s: rebuilding", what, index_path.name, stale)
        return None
    return meta


@dataclass
class LoadedIndex:
    info: VectorSetInfo
    index_type: str
    index: object  # faiss.IndexIDMap2

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


class VectorStore:
    """Opens, validates, rebuilds and queries the FAISS indexes under `DATA/index/`.

    In-place updates (`remove_ids`/`add_with_ids`) happen only in `_follow_commit`, which the
    catalog calls on its writer thread while it holds the exclusive lock; searches hold the
    shared lock. A rebuild makes a new index object and swaps it in under `_lock`.
    """

    def __init__(self, index_dir: Path, catalog: Catalog, settings: IndexSettings | None = None):
        self.index_dir = index_dir
        self.catalog = catalog
        self.settings = settings or IndexSettings()
        self._loaded: dict[tuple[str, str], LoadedIndex] = {}
        self._dirty: dict[tuple[str, str], float] = {}  # unsaved in-memory updates -> time of last save
        self._lock = threading.RLock()
        catalog.add_commit_listener(self._follow_commit)

    # -- files ----------------------------------------------------------------------
    def paths(self, kind: str, signature: str) -> tuple[Path, Path]:
        base = self.index_dir / index_basename(kind, signature)
        return base.with_suffix(".faiss"), base.with_suffix(".json")

    def _read_valid(self, info: VectorSetInfo) -> LoadedIndex | None:
        """The saved index if it agrees with the catalog, else None (with the reason logged)."""
        import faiss

        index_path, meta_path = self.paths(info.kind, info.signature)
        meta = read_current_sidecar(index_path, meta_path, {"format": INDEX_FORMAT, "signature": info.signature,
                                                            "generation": info.generation, "count": info.count}, "index")
        if meta is None:
            return None
        if meta.get("ids_sha256") != ids_digest(self.catalog.vector_ids(info.kind, info.signature)):
            log.info("index %s holds other ids than the catalog: rebuilding", index_path.name)
            return None
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            log.warning("index file %s unreadable (%s): rebuilding", index_path, str(exc).splitlines()[0])
            return None
        if index.ntotal != info.count or index.d != info.dim:
            log.info("index %s has %d vectors of dim %d, catalog %d of dim %d: rebuilding", index_path.name, index.ntotal, index.d, info.count, info.dim)
            return None
        configure_search(index, self.settings)
        return LoadedIndex(info, meta.get("index_type", "flat"), index)

    def _save(self, loaded: LoadedIndex, ids: np.ndarray | None = None) -> None:
        import faiss

        if ids is None:
            ids = faiss.vector_to_array(loaded.index.id_map)

        self.index_dir.mkdir(parents=True, exist_ok=True)
        index_path, meta_path = self.paths(loaded.info.kind, loaded.info.signature)
        meta = {
            "format": INDEX_FORMAT,
            "kind": loaded.info.kind,
            "signature": loaded.info.signature,
            "generation": loaded.info.generation,
            "count": loaded.info.count,
            "dim": loaded.info.dim,
            "index_type": loaded.index_type,
            "ids_sha256": ids_digest(ids),
        }
        # Index first, sidecar second: a crash in between leaves a sidecar that no longer
        # matches, which the next open detects and repairs by rebuilding.
        with atomic_path(index_path) as tmp:
            faiss.write_index(loaded.index, str(tmp))
        atomic_write_text(meta_path, json.dumps(meta, indent=1))

    # -- build / open -------------------------------------------------------------------
    def rebuild(self, info: VectorSetInfo, index_type: str | None = None) -> LoadedIndex:
        ids, raw = self.catalog.load_vectors(info.kind, info.signature)
        info = VectorSetInfo(info.kind, info.signature, info.dim, info.generation, len(ids))
        vectors = l2_normalized(as_vector_matrix(raw, info.dim, f"catalog vectors {info.kind}")) if len(ids) else None
        index = build_faiss_index(index_type or choose_index_type(self.settings, len(ids)), info.dim, self.settings, train=vectors)
        index_type = index_type_of(index)  # "ivf" over too few vectors is built flat
        if len(ids):
            index.add_with_ids(vectors, ids)
        loaded = LoadedIndex(info, index_type, index)
        self._save(loaded, ids)
        log.info("built %s index %s: %d vectors", index_type, self.paths(info.kind, info.signature)[0].name, len(ids))
        return loaded

    def get(self, kind: str, signature: str) -> LoadedIndex:
        """The index of one vector set, current with the catalog (rebuilt if needed)."""
        info = self.catalog.vector_set(kind, signature)
        with self._lock:
            cached = self._loaded.get((kind, signature))
            if cached is not None and cached.info == info:
                return cached
            loaded = self._read_valid(info) or self.rebuild(info)
            self._loaded[(kind, signature)] = loaded
            return loaded

    # -- incremental updates -------------------------------------------------------------
    def _follow_commit(self, changes) -> None:
        """Apply committed vector writes to loaded indexes (remove + add); rebuild on any doubt.

        Small indexes are saved at once; large ones at most every `SAVE_INTERVAL_S` and on
        `flush()`, since a stale file on disk is detected by its generation and rebuilt anyway.
        """
        with self._lock:
            for change in changes:
                key = (change.kind, change.signature)
                cached = self._loaded.get(key)
                if cached is None:
                    continue
                if cached.info.generation != change.old_generation or not self._apply(cached, change):
                    self._loaded.pop(key, None)  # out of step: the next get() rebuilds or reloads
                    self._dirty.pop(key, None)
                    continue
                last_save = self._dirty.get(key, 0.0)
                if cached.ntotal < SAVE_AT_ONCE_BELOW or time.monotonic() - last_save > SAVE_INTERVAL_S:
                    self._save(cached)
                    self._dirty.pop(key, None)
                else:
                    self._dirty.setdefault(key, last_save)

    def _apply(self, loaded: LoadedIndex, change) -> bool:
        """Remove the changed patients' ids, then add back the vectors they still have (deletions drop out)."""
        ids, raw = self.catalog.load_vectors(change.kind, change.signature, change.patient_ids)
        if len(ids) and raw.shape[1] != loaded.info.dim:
            return False
        try:
            loaded.index.remove_ids(np.asarray(change.patient_ids, dtype=np.int64))
            if len(ids):
                loaded.index.add_with_ids(l2_normalized(raw), ids)
        except RuntimeError as exc:  # e.g. HNSW cannot remove: rebuild instead
            log.info("index %s cannot be updated in place (%s): rebuilding", loaded.info.kind, str(exc).splitlines()[0])
            return False
        loaded.info = VectorSetInfo(loaded.info.kind, loaded.info.signature, loaded.info.dim, change.new_generation, loaded.ntotal)
        return True

    def flush(self) -> None:
        """Save indexes updated in memory since their last save."""
        with self._lock:
            for key in list(self._dirty):
                if key in self._loaded:
                    self._save(self._loaded[key])
                self._dirty.pop(key, None)

    def sync_all(self) -> list[LoadedIndex]:
        """Reconcile every index with the catalog (used at start-up and after imports)."""
        return [self.get(info.kind, info.signature) for info in self.catalog.vector_sets()]

    # -- query ----------------------------------------------------------------------
    def search(self, kind: str, signature: str, queries: np.ndarray, k: int):
        """Top-k (ids, cosine scores) per query row, under the catalog's read lock.

        Callers that turn the ids into patients hold `catalog.reading()` around both steps, so
        no commit lands in between.
        """
        with self.catalog.reading():
            loaded = self.get(kind, signature)
            queries = l2_normalized(as_vector_matrix(queries, loaded.info.dim, "query vector"))
            want = min(loaded.ntotal, k)
            if want == 0:
                return [np.zeros(0, np.int64)] * len(queries), [np.zeros(0, np.float32)] * len(queries)
            scores, ids = loaded.index.search(queries, want)
        out_ids, out_scores = [], []
        for row_ids, row_scores in zip(ids, scores):
            keep = row_ids >= 0
            out_ids.append(row_ids[keep].astype(np.int64))
            out_scores.append(row_scores[keep].astype(np.float32))
        return out_ids, out_scores
