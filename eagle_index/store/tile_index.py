"""FAISS indexes over stored tile tokens (region search): one per signature, ids = tile token ids.

They follow the catalog exactly like the patient indexes (`store/vectors.py`): the catalog is
the source of truth (`tile_tokens`, `tile_sets`); an index file `index/tiles--<hash>.faiss`
is saved atomically (temp file + rename, index first, sidecar second) with a JSON sidecar
recording the set's generation, count and a digest of the ids it holds; any disagreement
at open (or a missing/corrupt file) rebuilds it from the catalog. Committed changes (a
slide ingested, a patient re-aggregated) are applied to a loaded index in place (remove +
add), or it is dropped and rebuilt on any doubt. Tokens are L2-normalized, so inner product
is cosine. Above `IndexSettings.approximate_above` tiles the index is IVF + 4-bit PQ with
exact re-ranking (`build_faiss_index`), like the patient indexes.

Besides the FAISS index, a loaded set keeps the sorted tile ids and their patient ids in
memory, so grouping hits by patient needs no SQL (`group_tiles`).
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
from eagle_index.store import tiles_repo
from eagle_index.store.tiles_repo import TileSetInfo
from eagle_index.store.validation import as_vector_matrix, l2_normalized
from eagle_index.store.vectors import (
    SAVE_AT_ONCE_BELOW,
    SAVE_INTERVAL_S,
    build_faiss_index,
    choose_index_type,
    configure_search,
    ids_digest,
    index_type_of,
    read_current_sidecar,
)

log = logging.getLogger(__name__)

TILE_INDEX_FORMAT = 1
# Region queries ask the index for 4k + 8 tiles (grouping by patient needs more than k), so the
# patient index's re-ranking factor (128) would re-rank 11,264 candidates per query; FAISS's
# fast-scan search gets much slower once k x factor passes 1,024 (at 100,000 tiles: factor 8 ->
# 1.5 ms, 16 -> 19 ms p50). Tile indexes re-rank 11 x (88 x 11 = 968 candidates for k = 20) and
# search 24 lists: 8.3 ms p50, recall@20 0.966 at 1M tiles (docs/benchmarks.md, Tile search).
TILE_REFINE_K_FACTOR = 11
TILE_NPROBE = 24


def tile_index_settings(settings: IndexSettings) -> IndexSettings:
    """The index settings of tile indexes: the patient indexes' with the re-ranking factor and nprobe above."""
    return settings.model_copy(update={"ivf_refine_k_factor": min(settings.ivf_refine_k_factor, TILE_REFINE_K_FACTOR),
                                       "ivf_nprobe": max(settings.ivf_nprobe, TILE_NPROBE)})


def tile_index_basename(signature: str) -> str:
    return f"tiles--{hashlib.sha256(signature.encode()).hexdigest()[:16]}"


@dataclass
class LoadedTiles:
    info: TileSetInfo
    index_type: str
    index: object  # faiss.IndexIDMap2
    ids: np.ndarray  # sorted tile ids
    patients: np.ndarray  # patient id of each tile id

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def patients_of(self, tile_ids: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self.ids, tile_ids), 0, max(len(self.ids) - 1, 0))
        return self.patients[pos] if len(self.ids) else np.zeros(len(tile_ids), np.int64)


def group_tiles(tile_ids: np.ndarray, scores: np.ndarray, patients: np.ndarray, k: int, per_patient: int,
                accept=None, min_score: float | None = None) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """Up to k tiles, best first (ties by tile id), at most `per_patient` of each patient, grouped by
    patient: [(patient id, best score, [(tile id, score), ...]), ...] ordered by best score.

    accept: optional function (patient ids array) -> bool mask of patients that may be returned.
    """
    order = np.lexsort((tile_ids, -np.asarray(scores, np.float64)))
    keep = np.ones(len(order), bool) if accept is None else accept(patients[order])
    groups: dict[int, list[tuple[int, float]]] = {}
    taken = 0
    for pos, ok in zip(order, keep):
        if taken >= k:
            break
        score = float(scores[pos])
        if min_score is not None and score < min_score:
            break
        if not ok:
            continue
        pid = int(patients[pos])
        bucket = groups.setdefault(pid, [])
        if len(bucket) >= per_patient:
            continue
        bucket.append((int(tile_ids[pos]), score))
        taken += 1
    out = [(pid, tiles[0][1], tiles) for pid, tiles in groups.items() if tiles]
    out.sort(key=lambda g: (-g[1], g[0]))
    return out


class TileIndex:
    """Opens, validates, rebuilds, updates and queries the tile indexes under `DATA/index/`."""

    def __init__(self, index_dir: Path, catalog, settings: IndexSettings | None = None):
        self.index_dir = Path(index_dir)
        self.catalog = catalog
        self.settings = tile_index_settings(settings or IndexSettings())
        self._loaded: dict[str, LoadedTiles] = {}
        self._dirty: dict[str, float] = {}
        self._lock = threading.RLock()
        catalog.add_tile_listener(self._follow_commit)

    def paths(self, signature: str) -> tuple[Path, Path]:
        base = self.index_dir / tile_index_basename(signature)
        return base.with_suffix(".faiss"), base.with_suffix(".json")

    # -- files ----------------------------------------------------------------------------------
    def _read_valid(self, info: TileSetInfo) -> LoadedTiles | None:
        import faiss

        index_path, meta_path = self.paths(info.signature)
        meta = read_current_sidecar(index_path, meta_path, {"format": TILE_INDEX_FORMAT, "signature": info.signature,
                                                            "generation": info.generation, "count": info.count}, "tile index", log)
        if meta is None:
            return None
        ids, patients = tiles_repo.tile_ids(self.catalog, info.signature)
        if meta.get("ids_sha256") != ids_digest(ids):
            log.info("tile index %s holds other ids than the catalog: rebuilding", index_path.name)
            return None
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            log.warning("tile index file %s unreadable (%s): rebuilding", index_path, str(exc).splitlines()[0])
            return None
        if index.ntotal != info.count or index.d != info.dim:
            log.info("tile index %s has %d vectors of dim %d, catalog %d of dim %d: rebuilding",
                     index_path.name, index.ntotal, index.d, info.count, info.dim)
            return None
        configure_search(index, self.settings)
        return LoadedTiles(info, meta.get("index_type", "flat"), index, ids, patients)

    def _save(self, loaded: LoadedTiles) -> None:
        import faiss

        self.index_dir.mkdir(parents=True, exist_ok=True)
        index_path, meta_path = self.paths(loaded.info.signature)
        meta = {
            "format": TILE_INDEX_FORMAT, "what": "tile tokens", "signature": loaded.info.signature,
            "generation": loaded.info.generation, "count": loaded.info.count, "dim": loaded.info.dim,
            "index_type": loaded.index_type, "ids_sha256": ids_digest(loaded.ids),
        }
        with atomic_path(index_path) as tmp:
            faiss.write_index(loaded.index, str(tmp))
        atomic_write_text(meta_path, json.dumps(meta, indent=1))

    # -- build / open -----------------------------------------------------------------------------
    def rebuild(self, info: TileSetInfo, index_type: str | None = None) -> LoadedTiles:
        ids, patients, raw = tiles_repo.load_tokens(self.catalog, info.signature)
        info = TileSetInfo(info.signature, info.dim, info.generation, len(ids))
        vectors = l2_normalized(as_vector_matrix(raw, info.dim, "catalog tile tokens")) if len(ids) else None
        index = build_faiss_index(index_type or choose_index_type(self.settings, len(ids)), info.dim, self.settings, train=vectors)
        if len(ids):
            index.add_with_ids(vectors, ids)
        loaded = LoadedTiles(info, index_type_of(index), index, ids, patients)
        self._save(loaded)
        log.info("built %s tile index %s: %d tiles", loaded.index_type, self.paths(info.signature)[0].name, len(ids))
        return loaded

    def get(self, signature: str) -> LoadedTiles:
        """The index of one tile set, current with the catalog (rebuilt if needed)."""
        info = tiles_repo.tile_set(self.catalog, signature)
        with self._lock:
            cached = self._loaded.get(signature)
            if cached is not None and cached.info == info:
                return cached
            loaded = self._read_valid(info) or self.rebuild(info)
            self._loaded[signature] = loaded
            return loaded

    def sync_all(self) -> list[LoadedTiles]:
        return [self.get(info.signature) for info in tiles_repo.tile_sets(self.catalog)]

    def flush(self) -> None:
        with self._lock:
            for key in list(self._dirty):
                if key in self._loaded:
                    self._save(self._loaded[key])
                self._dirty.pop(key, None)

    # -- following commits ------------------------------------------------------------------------------
    def _follow_commit(self, changes) -> None:
        with self._lock:
            for change in changes:
                cached = self._loaded.get(change.signature)
                if cached is None:
                    continue
                if cached.info.generation != change.old_generation or not self._apply(cached, change):
                    self._loaded.pop(change.signature, None)
                    self._dirty.pop(change.signature, None)
                    continue
                last_save = self._dirty.get(change.signature, 0.0)
                if cached.ntotal < SAVE_AT_ONCE_BELOW or time.monotonic() - last_save > SAVE_INTERVAL_S:
                    self._save(cached)
                    self._dirty.pop(change.signature, None)
                else:
                    self._dirty.setdefault(change.signature, last_save)

    def _apply(self, loaded: LoadedTiles, change) -> bool:
        ids, patients, raw = tiles_repo.load_tokens(self.catalog, change.signature, change.added) if change.added else (
            np.zeros(0, np.int64), np.zeros(0, np.int64), None)
        if len(ids) != len(change.added) or (len(ids) and raw.shape[1] != loaded.info.dim):
            return False
        try:
            if change.removed:
                loaded.index.remove_ids(np.asarray(change.removed, dtype=np.int64))
            if len(ids):
                loaded.index.add_with_ids(l2_normalized(raw), ids)
        except RuntimeError as exc:
            log.info("tile index cannot be updated in place (%s): rebuilding", str(exc).splitlines()[0])
            return False
        keep = ~np.isin(loaded.ids, np.asarray(change.removed, np.int64))
        all_ids = np.concatenate([loaded.ids[keep], ids])
        all_pids = np.concatenate([loaded.patients[keep], patients])
        order = np.argsort(all_ids, kind="stable")
        loaded.ids, loaded.patients = all_ids[order], all_pids[order]
        loaded.info = TileSetInfo(loaded.info.signature, loaded.info.dim, change.new_generation, loaded.ntotal)
        return loaded.ntotal == len(loaded.ids)

    # -- query ------------------------------------------------------------------------------
    def search(self, signature: str, query: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile ids, cosine scores, patient ids) of the `want` nearest tiles to one query vector.

        Under the catalog's read lock: the writer changes loaded indexes in place only while it
        holds the exclusive side (see store/writer.py)."""
        with self.catalog.reading():
            loaded = self.get(signature)
            query = l2_normalized(as_vector_matrix(np.asarray(query, np.float32).reshape(1, -1), loaded.info.dim, "query token"))
            want = min(loaded.ntotal, want)
            if want <= 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
            scores, ids = loaded.index.search(query, want)
            valid = ids[0] >= 0
            tids = ids[0][valid].astype(np.int64)
            return tids, scores[0][valid].astype(np.float32), loaded.patients_of(tids)
