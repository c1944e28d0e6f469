"""FAISS indexes over stored tile tokens (region search): one per signature, ids = tile token ids.

They are `DerivedIndex`es (`store/derived_index.py`), the same class as the patient indexes
(`store/vectors.py`): the catalog is the source of truth (`tile_tokens`, `tile_sets`); an index
file `index/tiles--<hash>.faiss` is saved atomically (index first, sidecar second) with a JSON
sidecar recording the set's generation, count and a digest of the ids it holds; any
disagreement at open (or a missing/corrupt file) rebuilds it from the catalog. Committed
changes (a slide ingested, a patient re-aggregated) are applied to a loaded index in place
(remove + add, via `Catalog.add_tile_listener`), or it is dropped and rebuilt on any doubt.
Tokens are L2-normalized, so inner product is cosine. Above `IndexSettings.approximate_above`
tiles the index is IVF + 4-bit PQ with exact re-ranking (`build_faiss_index`).

Besides the FAISS index, a loaded set keeps the sorted tile ids and their patient ids in
memory, so grouping hits by patient needs no SQL (`group_tiles`). The writer changes them
(in place, with the index) only under the catalog's exclusive lock: read them, search, group
and name the hits inside one `catalog.reading()` section.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from eagle_index.config import IndexSettings
from eagle_index.store import tiles_repo
from eagle_index.store.derived_index import DerivedIndex, Loaded, Rows
from eagle_index.store.tiles_repo import TileSetInfo

log = logging.getLogger(__name__)

TILE_INDEX_FORMAT = 1
# Region queries ask the index for 4k + 8 tiles (grouping by patient needs more than k), so the
# patient index's re-ranking factor (128) would re-rank 11,264 candidates per query; FAISS's
# fast-scan search gets much slower once k x factor passes 1,024 (at 100,000 tiles: factor 8 ->
# 1.5 ms, 16 -> 19 ms p50). Tile indexes re-rank 11 x (88 x 11 = 968 candidates for k = 20) and
# search 24 lists: 8.3 ms p50, recall@20 0.966 at 1M tiles (docs/benchmarks.md, Tile search).
TILE_REFINE_K_FACTOR = 11
# The lean type re-ranks from its refine file in numpy, not through FAISS's IndexRefine, so the cliff
# above does not apply: 88 x 32 = 2,816 candidates for k = 20 (5M tiles: recall@20 0.918 with 968).
TILE_LEAN_REFINE_K_FACTOR = 32
TILE_NPROBE = 24


def tile_index_settings(settings: IndexSettings) -> IndexSettings:
    """The index settings of tile indexes: the patient indexes' with the re-ranking factor and nprobe above."""
    return settings.model_copy(update={"ivf_refine_k_factor": min(settings.ivf_refine_k_factor, TILE_REFINE_K_FACTOR),
                                       "lean_refine_k_factor": min(settings.lean_refine_k_factor, TILE_LEAN_REFINE_K_FACTOR),
                                       "ivf_nprobe": max(settings.ivf_nprobe, TILE_NPROBE)})


def tile_index_basename(signature: str) -> str:
    return f"tiles--{hashlib.sha256(signature.encode()).hexdigest()[:16]}"


class LoadedTiles(Loaded):
    """A loaded tile index: `ids` sorted tile ids, `owners` (also `patients`) their patient ids."""

    @property
    def patients(self) -> np.ndarray:
        return self.owners

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


class TileIndex(DerivedIndex):
    """The tile indexes under `DATA/index/`: `get(signature)`, `rebuild(info)`, `search(signature, query, want)`."""

    what = "tile index"
    unit = "tiles"
    index_format = TILE_INDEX_FORMAT
    loaded_class = LoadedTiles
    log = log

    def __init__(self, index_dir: Path, catalog, settings: IndexSettings | None = None):
        super().__init__(index_dir, catalog, tile_index_settings(settings or IndexSettings()))
        catalog.add_tile_listener(self._follow_commit)

    # -- the catalog side ------------------------------------------------------------------------
    def key_of(self, info: TileSetInfo) -> tuple[str]:
        return (info.signature,)

    def change_key(self, change) -> tuple[str]:
        return (change.signature,)

    def basename(self, key) -> str:
        return tile_index_basename(*key)

    def current_info(self, key) -> TileSetInfo:
        return tiles_repo.tile_set(self.catalog, *key)

    def all_infos(self) -> list[TileSetInfo]:
        return tiles_repo.tile_sets(self.catalog)

    def sidecar_identity(self, info: TileSetInfo) -> dict:
        return {"what": "tile tokens", "signature": info.signature}

    def catalog_ids(self, info: TileSetInfo):
        return tiles_repo.tile_ids(self.catalog, info.signature)

    def load_rows(self, info: TileSetInfo) -> Rows:
        ids, patients, raw = tiles_repo.load_tokens(self.catalog, info.signature)
        return Rows(ids, patients, raw)

    def change_rows(self, loaded, change):
        if change.added:
            ids, patients, raw = tiles_repo.load_tokens(self.catalog, change.signature, change.added)
        else:
            ids, patients, raw = np.zeros(0, np.int64), np.zeros(0, np.int64), None
        if len(ids) != len(change.added):
            return None
        return np.asarray(change.removed, np.int64), Rows(ids, patients, raw)

    # -- query ------------------------------------------------------------------------------------
    def search(self, signature: str, query: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile ids, cosine scores, patient ids) of the `want` nearest tiles to one query vector.

        Under the catalog's read lock: the writer changes loaded indexes (and their id and patient
        arrays) in place only while it holds the exclusive side (see store/writer.py). Callers that
        go on to read those arrays or name the tiles hold `catalog.reading()` around all of it."""
        with self.catalog.reading():
            loaded = self.get(signature)
            scores, ids = self.search_loaded(loaded, np.asarray(query, np.float32).reshape(1, -1), want, "query token")
            if ids.shape[1] == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
            valid = ids[0] >= 0
            tids = ids[0][valid].astype(np.int64)
            return tids, scores[0][valid].astype(np.float32), loaded.patients_of(tids)
