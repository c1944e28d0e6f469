"""A FAISS index derived from catalog rows: the one class behind the patient and the tile indexes.

The catalog is the source of truth. One `DerivedIndex` keeps, per vector set (a key such as
(kind, signature) or (signature,)), an index file `index/<basename>.faiss` next to a JSON
sidecar recording the set's generation, count and a digest of the ids it holds. It:
- opens a saved file only when the sidecar, the ids digest and the file agree with the catalog,
  else rebuilds from the catalog rows (`get`);
- rebuilds on demand and swaps the new index in (`rebuild`: callers never touch `_loaded`);
- follows committed changes in place (remove + add) on the writer thread, while the writer
  holds the catalog's exclusive lock, or drops the set on any doubt (the next `get` rebuilds);
- saves atomically, index first, sidecar second (small sets after every commit, large ones at
  most every `SAVE_INTERVAL_S` and on `flush`);
- searches under the catalog's read lock, single queries that arrive together gathered into one
  FAISS call per index and k (`store/batching.py`, EAGLE_INDEX_SEARCH_BATCH_MS).

Loading and rebuilding also run under the read lock (and then `_lock`, always in that order: the
writer holds the exclusive side before it takes `_lock`), so no commit lands between reading
the rows and swapping the index in. A loaded set keeps its sorted ids (and, for tiles, the
owner of each id) in memory; the writer changes them only under the exclusive lock, so a
reader holding `catalog.reading()` sees one consistent generation.

Subclasses say where the rows come from: `store/vectors.py` (`VectorStore`, patient vectors)
and `store/tile_index.py` (`TileIndex`, tile tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eagle_index.atomic import atomic_path, atomic_write_text
from eagle_index.config import IndexSettings
from eagle_index.store.batching import SearchBatcher, batchable
from eagle_index.store.validation import as_vector_matrix, l2_normalized

log = logging.getLogger(__name__)

Key = tuple  # (kind, signature) for patient indexes, (signature,) for tile indexes


# -- building FAISS indexes (shared by every derived index, and by the benchmarks) ---------------
SAVE_AT_ONCE_BELOW = 50_000  # vectors: below this an index file is rewritten after every change
SAVE_INTERVAL_S = 60.0


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.sort(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()


INDEX_TYPES = ("flat", "ivf", "hnsw", "lean")  # lean: store/lean_index.py (PQ codes in RAM, fixed-point re-ranking from disk)
IVF_MIN_TRAIN_PER_LIST = 39  # below this k-means is unreliable (FAISS warns); such sets stay exact
IVF_MIN_LISTS, IVF_MAX_LISTS = 16, 65_536


def choose_index_type(settings: IndexSettings, count: int) -> str:
    if settings.type != "auto":
        return settings.type
    if settings.lean_above is not None and count > settings.lean_above:
        return "lean"
    return "ivf" if count > settings.approximate_above else "flat"


def ivf_list_count(settings: IndexSettings, count: int) -> int:
    """Coarse (k-means) lists of an IVF index over `count` vectors: `ivf_nlist`, or about sqrt(count)."""
    return settings.ivf_nlist or int(np.clip(round(np.sqrt(max(count, 1))), IVF_MIN_LISTS, IVF_MAX_LISTS))


def pq_subquantizers(dim: int, dims_per_code: int) -> int:
    """The largest divisor of `dim` not above dim / dims_per_code (PQ needs equal sub-vectors)."""
    target = max(1, dim // dims_per_code)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def index_type_of(index) -> str:
    """'flat', 'ivf', 'hnsw' or 'lean': what a FAISS index (IndexIDMap2-wrapped or not) actually is."""
    import faiss

    from eagle_index.store.lean_index import LeanIndex

    if isinstance(index, LeanIndex):
        return "lean"

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


def build_faiss_index(index_type: str, dim: int, settings: IndexSettings, train: np.ndarray | None = None, count: int | None = None,
                      store_dir: Path | None = None, stem: str = "lean"):
    """An empty (but trained) FAISS index with id mapping, for normalized vectors and inner product.

    "ivf" is an inverted file over about sqrt(N) k-means lists whose vectors are coded by
    4-bit fast-scan product quantization of the residuals, searched in `ivf_nprobe` lists,
    the best `ivf_refine_k_factor * k` candidates re-ranked with the exact float vectors (so
    scores are exact cosines). It is trained here on (a sample of) `train`, the normalized
    vectors about to be added; `count` is how many will be added (default len(train)).
    With too few vectors to train (or none given) an exact flat index is built instead:
    use `index_type_of` to record what was built.
    "lean" is the same IVF + PQ codes without the float copy in RAM: a `LeanIndex` re-ranking from
    int16 fixed-point rows in a refine file `store_dir/<stem>.<token>.i16` (store/lean_index.py).
    """
    import faiss

    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r} (one of {', '.join(INDEX_TYPES)})")
    if index_type in ("ivf", "lean"):
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
        refine = ",RFlat" if index_type == "ivf" else ""
        inner = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x4fsr{refine}", faiss.METRIC_INNER_PRODUCT)
        sample_size = min(len(train), settings.ivf_train_per_list * nlist)
        if sample_size < len(train):
            rows = np.sort(np.random.default_rng(0).choice(len(train), sample_size, replace=False))
            sample = np.ascontiguousarray(train[rows], dtype=np.float32)
        else:
            sample = np.ascontiguousarray(train, dtype=np.float32)
        inner.train(sample)
    if index_type == "lean":
        from eagle_index.store.lean_index import LeanIndex

        index = LeanIndex.create(inner, dim, store_dir, stem, settings.lean_refine_k_factor)
        configure_search(index, settings)
        return index
    index = faiss.IndexIDMap2(inner)
    configure_search(index, settings)
    return index


def configure_search(index, settings: IndexSettings) -> None:
    """Apply the search-time settings (efSearch, nprobe, re-ranking depth) to a built or loaded index."""
    import faiss

    from eagle_index.store.lean_index import LeanIndex

    if isinstance(index, LeanIndex):
        index.k_factor = float(settings.lean_refine_k_factor)
        index.base.nprobe = min(settings.ivf_nprobe, index.base.nlist)
        return
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        inner.k_factor = float(settings.ivf_refine_k_factor)
        inner = faiss.downcast_index(inner.base_index)
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(settings.ivf_nprobe, inner.nlist)
    elif isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = settings.hnsw_ef_search


def warm_in_background(index, fraction: float) -> None:
    """For a long-running process: on a daemon thread, compile the re-ranking kernel (store/rerank.py) and read
    a lean index's refine file into memory when it is at most `fraction` of the machine's memory
    (store/lean_index.py `LeanIndex.warm`); other index types hold their vectors already."""
    from eagle_index.store.lean_index import LeanIndex

    if not isinstance(index, LeanIndex) or fraction <= 0:
        return
    from eagle_index.store import rerank

    size = index.refine_path.stat().st_size if index.refine_path.exists() else 0
    fits = 0 < size <= fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def warm() -> None:
        rerank.prepare()  # the re-ranking kernel is compiled (or loaded) before the first search needs it
        if fits:
            index.warm()

    threading.Thread(target=warm, name=f"warm {index.refine_path.name}", daemon=True).start()


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



@dataclass(eq=False)
class Loaded:
    """One loaded index: the catalog's summary of its set (`info`: generation, count, dim), the
    FAISS index, its sorted ids and (tile indexes) the owner of each id."""

    info: Any  # VectorSetInfo | TileSetInfo
    index_type: str
    index: object  # faiss.IndexIDMap2
    ids: np.ndarray  # sorted
    owners: np.ndarray | None = None  # per id (tile indexes: patient ids)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


@dataclass(frozen=True)
class Rows:
    """Catalog rows of one set (or of a change): ids sorted, their owners (or None), raw float32 [N, D]."""

    ids: np.ndarray
    owners: np.ndarray | None
    raw: np.ndarray | None


class DerivedIndex:
    """Opens, validates, rebuilds, follows, saves and searches the FAISS indexes of one row source.

    Subclasses set `what` (log wording), `unit`, `index_format`, `loaded_class`, and implement the
    catalog side: `key_of`, `change_key`, `basename`, `current_info`, `all_infos`, `sidecar_identity`,
    `catalog_ids`, `load_rows`, `change_rows`, and register `_follow_commit` with the catalog's listener hook.
    """

    what = "index"
    unit = "vectors"
    index_format = 1
    loaded_class: type[Loaded] = Loaded
    log = logging.getLogger(__name__)

    def __init__(self, index_dir: Path, catalog, settings: IndexSettings):
        self.index_dir = Path(index_dir)
        self.catalog = catalog
        self.settings = settings
        self._loaded: dict[Key, Loaded] = {}
        self._dirty: dict[Key, float] = {}  # unsaved in-memory updates -> time of last save
        self._lock = threading.RLock()
        # single-query searches arriving together share one FAISS call (store/batching.py)
        self.batcher = SearchBatcher(settings.search_batch_ms / 1000.0)

    # -- the catalog side (subclasses) ------------------------------------------------------------
    def key_of(self, info) -> Key:
        raise NotImplementedError

    def change_key(self, change) -> Key:
        raise NotImplementedError

    def basename(self, key: Key) -> str:
        raise NotImplementedError

    def current_info(self, key: Key):
        """The set's summary in the catalog now (NotFoundError if it has none)."""
        raise NotImplementedError

    def all_infos(self) -> list:
        raise NotImplementedError

    def sidecar_identity(self, info) -> dict:
        """Sidecar fields after "format" that name the set (the "signature" one is checked at open)."""
        raise NotImplementedError

    def catalog_ids(self, info) -> tuple[np.ndarray, np.ndarray | None]:
        """(sorted ids, owners or None) of the set in the catalog."""
        raise NotImplementedError

    def load_rows(self, info) -> Rows:
        raise NotImplementedError

    def change_rows(self, loaded: Loaded, change) -> tuple[np.ndarray, Rows] | None:
        """(ids to remove, rows to add) for a committed change; None when it cannot be applied in place."""
        raise NotImplementedError

    # -- files ---------------------------------------------------------------------------------
    def paths(self, *key) -> tuple[Path, Path]:
        base = self.index_dir / self.basename(tuple(key))
        return base.with_suffix(".faiss"), base.with_suffix(".json")

    def _read_valid(self, info) -> Loaded | None:
        """The saved index if it agrees with the catalog, else None (with the reason logged)."""
        import faiss

        index_path, meta_path = self.paths(*self.key_of(info))
        meta = read_current_sidecar(index_path, meta_path, {"format": self.index_format, "signature": info.signature,
                                                            "generation": info.generation, "count": info.count},
                                    self.what, self.log)
        if meta is None:
            return None
        ids, owners = self.catalog_ids(info)
        if meta.get("ids_sha256") != ids_digest(ids):
            self.log.info("%s %s holds other ids than the catalog: rebuilding", self.what, index_path.name)
            return None
        try:
            if meta.get("index_type") == "lean":
                from eagle_index.store.lean_index import LeanIndex

                index = LeanIndex.read(index_path, self.settings.lean_refine_k_factor)
            else:
                index = faiss.read_index(str(index_path))
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            self.log.warning("%s file %s unreadable (%s): rebuilding", self.what, index_path, str(exc).splitlines()[0])
            return None
        if index.ntotal != info.count or index.d != info.dim:
            self.log.info("%s %s has %d vectors of dim %d, catalog %d of dim %d: rebuilding", self.what, index_path.name,
                          index.ntotal, index.d, info.count, info.dim)
            return None
        configure_search(index, self.settings)
        warm_in_background(index, self.settings.lean_warm_fraction)
        return self.loaded_class(info, meta.get("index_type", "flat"), index, ids, owners)

    def _save(self, loaded: Loaded) -> None:
        import faiss

        self.index_dir.mkdir(parents=True, exist_ok=True)
        index_path, meta_path = self.paths(*self.key_of(loaded.info))
        meta = {
            "format": self.index_format,
            **self.sidecar_identity(loaded.info),
            "generation": loaded.info.generation,
            "count": loaded.info.count,
            "dim": loaded.info.dim,
            "index_type": loaded.index_type,
            "ids_sha256": ids_digest(loaded.ids),
        }
        # Index first, sidecar second: a crash in between leaves a sidecar that no longer
        # matches, which the next open detects and repairs by rebuilding.
        lean = loaded.index_type == "lean"
        with atomic_path(index_path) as tmp:
            if lean:
                loaded.index.write(tmp)
            else:
                faiss.write_index(loaded.index, str(tmp))
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
        from eagle_index.store.lean_index import remove_stale_refine_files

        remove_stale_refine_files(self.index_dir, self.basename(self.key_of(loaded.info)),
                                  loaded.index.refine_path if lean else None)

    # -- build / open ------------------------------------------------------------------------------
    def _build(self, info, index_type: str | None = None) -> Loaded:
        rows = self.load_rows(info)
        n = len(rows.ids)
        info = dataclasses.replace(info, count=n)
        vectors = l2_normalized(as_vector_matrix(rows.raw, info.dim, f"catalog {self.unit}")) if n else None
        rows = Rows(rows.ids, rows.owners, None)  # the raw copy goes before the index grows (1M x 1280-d: 5 GB each)
        index = build_faiss_index(index_type or choose_index_type(self.settings, n), info.dim, self.settings, train=vectors,
                                  store_dir=self.index_dir, stem=self.basename(self.key_of(info)))
        if n:
            index.add_with_ids(vectors, rows.ids)
        loaded = self.loaded_class(info, index_type_of(index), index, rows.ids, rows.owners)  # "ivf" over too few is flat
        self._save(loaded)
        warm_in_background(index, self.settings.lean_warm_fraction)
        self.log.info("built %s %s %s: %d %s", loaded.index_type, self.what, self.paths(*self.key_of(info))[0].name, n, self.unit)
        return loaded

    def rebuild(self, info, index_type: str | None = None) -> Loaded:
        """Rebuild the set `info` names from the catalog, save it, and swap it in: later `get`s and
        searches use it and commits update it. Returns it."""
        key = self.key_of(info)
        with self.catalog.reading():
            info = self.current_info(key)  # now, under the lock: no commit between the rows and the swap
            with self._lock:
                loaded = self._build(info, index_type)
                self._swap(key, loaded)
                return loaded

    def _swap(self, key: Key, loaded: Loaded | None) -> None:
        if loaded is None:
            self._loaded.pop(key, None)
        else:
            self._loaded[key] = loaded
        self._dirty.pop(key, None)

    def get(self, *key) -> Loaded:
        """The index of one set, current with the catalog (opened from its file, or rebuilt)."""
        key = tuple(key)
        with self.catalog.reading():
            info = self.current_info(key)
            with self._lock:
                cached = self._loaded.get(key)
                if cached is not None and cached.info == info:
                    return cached
                loaded = self._read_valid(info) or self._build(info)
                self._swap(key, loaded)
                return loaded

    def unload(self) -> None:
        """Forget every loaded index (saving unsaved updates first): the next `get` reopens the files."""
        with self._lock:
            self.flush()
            self._loaded.clear()

    def sync_all(self) -> list[Loaded]:
        """Reconcile every index with the catalog (used at start-up and after imports)."""
        return [self.get(*self.key_of(info)) for info in self.all_infos()]

    def flush(self) -> None:
        """Save indexes updated in memory since their last save."""
        with self._lock:
            for key in list(self._dirty):
                if key in self._loaded:
                    self._save(self._loaded[key])
                self._dirty.pop(key, None)

    # -- following commits -----------------------------------------------------------------------
    def _follow_commit(self, changes) -> None:
        """Apply committed changes to loaded indexes (remove + add); drop a set on any doubt.

        Runs on the writer thread while it holds the catalog's exclusive lock. Small indexes are
        saved at once; large ones at most every `SAVE_INTERVAL_S` and on `flush()`, since a
        stale file on disk is detected by its generation and rebuilt anyway.
        """
        with self._lock:
            for change in changes:
                key = self.change_key(change)
                cached = self._loaded.get(key)
                if cached is None:
                    continue
                if cached.info.generation != change.old_generation or not self._apply(cached, change):
                    self._swap(key, None)  # out of step: the next get() reloads or rebuilds
                    continue
                last_save = self._dirty.get(key, 0.0)
                if cached.ntotal < SAVE_AT_ONCE_BELOW or time.monotonic() - last_save > SAVE_INTERVAL_S:
                    self._save(cached)
                    self._dirty.pop(key, None)
                else:
                    self._dirty.setdefault(key, last_save)

    def _apply(self, loaded: Loaded, change) -> bool:
        """Remove ids, add rows, keep the sorted ids (and owners) in step; False on any doubt."""
        found = self.change_rows(loaded, change)
        if found is None:
            return False
        removed, rows = found
        if len(rows.ids) and rows.raw.shape[1] != loaded.info.dim:
            return False
        try:
            if len(removed):
                loaded.index.remove_ids(np.asarray(removed, dtype=np.int64))
            if len(rows.ids):
                loaded.index.add_with_ids(l2_normalized(rows.raw), rows.ids)
        except RuntimeError as exc:  # e.g. HNSW cannot remove: rebuild instead
            self.log.info("%s %s cannot be updated in place (%s): rebuilding", self.what, self.basename(self.key_of(loaded.info)),
                          str(exc).splitlines()[0])
            return False
        keep = ~np.isin(loaded.ids, np.asarray(removed, np.int64))
        all_ids = np.concatenate([loaded.ids[keep], rows.ids])
        order = np.argsort(all_ids, kind="stable")
        loaded.ids = all_ids[order]
        if loaded.owners is not None:
            loaded.owners = np.concatenate([loaded.owners[keep], rows.owners])[order]
        loaded.info = dataclasses.replace(loaded.info, generation=change.new_generation, count=loaded.ntotal)
        return loaded.ntotal == len(loaded.ids)

    # -- query -------------------------------------------------------------------------------------
    def search_rows(self, key: Key, queries: np.ndarray, k: int, label: str = "query vector") -> tuple[np.ndarray, np.ndarray]:
        """FAISS (scores, ids) [Q, min(k, ntotal)] for query rows (normalized here), under the read lock
        (-1 ids where an approximate index found fewer). Callers that turn ids into patients or tiles
        hold `catalog.reading()` around both steps, so no commit lands in between."""
        with self.catalog.reading():
            return self.search_loaded(self.get(*key), queries, k, label)

    def search_loaded(self, loaded: Loaded, queries: np.ndarray, k: int, label: str = "query vector",
                      params=None) -> tuple[np.ndarray, np.ndarray]:
        """`search_rows` on an index from `get`; the caller holds `catalog.reading()` since that `get`.

        A single query row without FAISS `params` (e.g. an id selector) may be searched in one call
        with others of the same index and k (`store/batching.py`); the answer is the one it gets alone."""
        if not self.catalog.lock.holds_read():
            raise RuntimeError("search a loaded index only under catalog.reading()")
        queries = l2_normalized(as_vector_matrix(queries, loaded.info.dim, label))
        want = min(loaded.ntotal, k)
        if want <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if params is None and len(queries) == 1 and self.batcher.enabled and loaded.index_type != "lean":
            # gathered with other single queries of this index and k (every caller holds the read lock)
            return self.batcher.search(loaded.index, np.ascontiguousarray(queries, np.float32), want,
                                       batchable(loaded.index, loaded.info.dim))
        return self.batcher.direct(loaded.index, queries, want, params)
