"""FAISS indexes derived from the catalog: one per (kind, signature), ids = patient ids.

Inner product over L2-normalized float32 vectors is cosine similarity. The index files, their
sidecars (generation, count, ids digest), rebuilds, in-place updates after commits and searches
under the catalog's read lock are `store/derived_index.py`'s `DerivedIndex`; this module says
where the rows come from (the catalog's `vectors` table) and keeps the patient-index API.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from eagle_index.config import IndexSettings
from eagle_index.store.catalog_reads import CatalogReads, VectorSetInfo
from eagle_index.store.derived_index import (  # noqa: F401 - re-exported: the FAISS helpers' historical home
    INDEX_TYPES,
    IVF_MAX_LISTS,
    IVF_MIN_LISTS,
    IVF_MIN_TRAIN_PER_LIST,
    SAVE_AT_ONCE_BELOW,
    SAVE_INTERVAL_S,
    DerivedIndex,
    Loaded,
    Rows,
    build_faiss_index,
    choose_index_type,
    configure_search,
    ids_digest,
    index_type_of,
    ivf_list_count,
    pq_subquantizers,
    read_current_sidecar,
)

log = logging.getLogger(__name__)

INDEX_FORMAT = 1


def index_basename(kind: str, signature: str) -> str:
    safe_kind = "".join(c if c.isalnum() or c in "-_" else "_" for c in kind)
    return f"{safe_kind}--{hashlib.sha256(signature.encode()).hexdigest()[:16]}"


class LoadedIndex(Loaded):
    """A loaded patient index (ids: patient ids, sorted)."""


class VectorStore(DerivedIndex):
    """The patient indexes under `DATA/index/` (`<kind>--<hash>.faiss`): `get(kind, signature)`,
    `rebuild(info)`, `search(kind, signature, queries, k)`; see `DerivedIndex`."""

    what = "index"
    unit = "vectors"
    index_format = INDEX_FORMAT
    loaded_class = LoadedIndex
    log = log

    def __init__(self, index_dir: Path, catalog: CatalogReads, settings: IndexSettings | None = None):
        super().__init__(index_dir, catalog, settings or IndexSettings())
        catalog.add_commit_listener(self._follow_commit)

    # -- the catalog side ------------------------------------------------------------------------
    def key_of(self, info: VectorSetInfo) -> tuple[str, str]:
        return (info.kind, info.signature)

    def change_key(self, change) -> tuple[str, str]:
        return (change.kind, change.signature)

    def basename(self, key) -> str:
        return index_basename(*key)

    def current_info(self, key) -> VectorSetInfo:
        return self.catalog.vector_set(*key)

    def all_infos(self) -> list[VectorSetInfo]:
        return self.catalog.vector_sets()

    def sidecar_identity(self, info: VectorSetInfo) -> dict:
        return {"kind": info.kind, "signature": info.signature}

    def catalog_ids(self, info: VectorSetInfo):
        return np.asarray(self.catalog.vector_ids(info.kind, info.signature), np.int64), None

    def load_rows(self, info: VectorSetInfo) -> Rows:
        ids, raw = self.catalog.load_vectors(info.kind, info.signature)
        return Rows(np.asarray(ids, np.int64), None, raw)

    def change_rows(self, loaded, change):
        """Remove the changed patients' ids, then add back the vectors they still have (deletions drop out)."""
        ids, raw = self.catalog.load_vectors(change.kind, change.signature, change.patient_ids)
        return np.asarray(change.patient_ids, np.int64), Rows(np.asarray(ids, np.int64), None, raw)

    # -- query ------------------------------------------------------------------------------------
    def search(self, kind: str, signature: str, queries: np.ndarray, k: int):
        """Top-k (ids, cosine scores) per query row, under the catalog's read lock.

        Callers that turn the ids into patients hold `catalog.reading()` around both steps, so
        no commit lands in between.
        """
        scores, ids = self.search_rows((kind, signature), queries, k)
        out_ids, out_scores = [], []
        for row_ids, row_scores in zip(ids, scores):
            keep = row_ids >= 0
            out_ids.append(row_ids[keep].astype(np.int64))
            out_scores.append(row_scores[keep].astype(np.float32))
        return out_ids, out_scores
