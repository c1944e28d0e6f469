"""The one facade the CLI, the daemon and the web app call.

Front ends only parse input and render output; everything they can do is a method here.
The service owns one catalog connection and the FAISS indexes derived from it.
"""

from __future__ import annotations

import logging
from functools import cached_property

import numpy as np
from pathlib import Path

from eagle_index import importing
from eagle_index.config import Settings
from eagle_index.errors import ModelError, NotFoundError
from eagle_index.store.catalog import Catalog
from eagle_index.store.vectors import VectorStore

log = logging.getLogger(__name__)


class EagleService:
    """Opens the catalog and the models lazily: `embed` needs neither a catalog nor an index."""

    def __init__(self, settings: Settings, create: bool = True):
        self.settings = settings
        self._create = create

    @cached_property
    def catalog(self) -> Catalog:
        from eagle_index.owner import refuse_if_owned

        refuse_if_owned(self.settings.data_dir)
        if not self._create and not self.settings.catalog_path.exists():  # a mistyped folder is not a new archive
            raise NotFoundError(f"no catalog at {self.settings.data_dir} "
                                "(create one with `eagle-index db upgrade` or by importing)")
        return Catalog.open(self.settings.catalog_path, create=self._create)

    @cached_property
    def jobs(self):
        """The ingestion queue (used by the daemon/server and the status command)."""
        import os
        import socket

        from eagle_index.store.jobs import JobQueue

        return JobQueue(self.catalog, worker_id=f"{socket.gethostname()}:{os.getpid()}")

    def status(self) -> dict:
        """Queue counts, running job and progress, recent failures, throughput, index size."""
        summary = self.jobs.summary()
        summary["index"] = [
            {"kind": s.kind, "signature": s.signature, "vectors": s.count, "dim": s.dim} for s in self.catalog.vector_sets()
        ]
        summary["patients"] = self.catalog.stats()["patients"]
        return summary

    @cached_property
    def vectors(self) -> VectorStore:
        return VectorStore(self.settings.index_dir, self.catalog, self.settings.index)

    @cached_property
    def models(self):
        """The three models, loaded once per process (strict loading, digests checked)."""
        from eagle_index.models import load_models

        return load_models(self.settings)

    # Topic services: each lives in its own module and gets this facade (catalog, vectors,
    # models, settings) so the front ends still call one object.
    @cached_property
    def searcher(self):
        from eagle_index.search import SearchService

        return SearchService(self)

    @cached_property
    def cohorts(self):
        from eagle_index.cohorts import CohortService

        return CohortService(self)

    @cached_property
    def probes(self):
        from eagle_index.probes import ProbeService

        return ProbeService(self)

    def __enter__(self) -> "EagleService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if "vectors" in self.__dict__:
            self.vectors.flush()
        if "catalog" in self.__dict__:
            self.catalog.close()

    # -- overview ---------------------------------------------------------------------
    def stats(self) -> dict:
        stats = self.catalog.stats()
        stats["vector_sets"] = [
            {"kind": s.kind, "signature": s.signature, "dim": s.dim, "count": s.count, "generation": s.generation}
            for s in self.catalog.vector_sets()
        ]
        return stats

    # -- search -------------------------------------------------------------------------
    def _signature_for(self, patient_id: int, external_id: str, kind: str, signature: str | None) -> str:
        sets = self.catalog.vector_sets(kind)
        if signature is not None:
            if not any(s.signature == signature for s in sets):
                raise NotFoundError(f"no vectors of kind {kind!r} with signature {signature!r}")
            return signature
        having = [s for s in sets if self._has_vector(s, patient_id)]
        if not having:
            kinds = sorted({s.kind for s in self.catalog.vector_sets() if self._has_vector(s, patient_id)})
            raise NotFoundError(
                f"patient {external_id!r} has no {kind!r} vector (it has: {', '.join(kinds) or 'none'}; choose one with --kind)"
            )
        return max(having, key=lambda s: s.count).signature

    def _has_vector(self, vector_set, patient_id: int) -> bool:
        ids = self.catalog.vector_ids(vector_set.kind, vector_set.signature)  # sorted, cached
        position = int(np.searchsorted(ids, patient_id))
        return position < len(ids) and int(ids[position]) == patient_id

    def search_patient(self, external_id: str, k: int = 10, kind: str = "eagle", signature: str | None = None,
                       filters=None, explain: bool = False, pairs: int = 5) -> list[dict]:
        """The k most similar other patients to a stored patient, by cosine similarity.

        `filters` is an `eagle_index.search.SearchFilters`; the full search (vector and slide
        queries, kNN vote, notes) is `self.searcher`.
        """
        return self.searcher.search_patient(external_id, k, kind, signature, filters, explain=explain, pairs=pairs).hits

    def _hits(self, hit_ids, scores, kind: str, signature: str) -> list[dict]:
        return self.searcher.hits(hit_ids, scores, kind, signature)

    # -- imports ------------------------------------------------------------------------
    def import_embeddings(self, paths: list[Path], kind: str | None = None, signature: str | None = None,
                          slide_table: Path | None = None) -> importing.ImportReport:
        report = importing.import_embeddings(self.catalog, paths, kind, signature, slide_table)
        self.vectors.sync_all()
        return report

    def import_features(self, slide_table: Path, ctranspath_dir: Path, virchow2_dir: Path | None = None,
                        progress=None) -> importing.ImportReport:
        chief, note = self._try_load_chief()
        report = importing.import_features(self.catalog, self.settings, slide_table, ctranspath_dir, virchow2_dir, chief,
                                           progress=progress)
        if note:
            report.notes.insert(0, note)
        self.vectors.sync_all()
        return report

    def import_labels(self, path: Path, create_missing: bool = False) -> importing.ImportReport:
        return importing.import_labels(self.catalog, path, create_missing)

    def _try_load_chief(self):
        """CHIEF when its weights are available; imports still store mean-ctranspath without it."""
        from eagle_index.models import load_models

        try:
            return load_models(self.settings, only=["chief"]).chief, None
        except ModelError as exc:
            return None, f"CHIEF not loaded ({exc})"

    # -- embedding and ingestion --------------------------------------------------------------
    def embed(self, slides: list[Path], patient: str | None = None, artifacts_dir: Path | None = None,
              mpp: float | None = None, progress=None):
        """Embed slides without touching the catalog: {patient: PatientVectors}, and the provenance."""
        from eagle_index.ingest import steps as ingestion

        return ingestion.embed_files(self.models, self.settings, slides, patient, artifacts_dir, mpp, progress)

    def ingest(self, paths: list[Path], patient: str | None = None, slide_table: Path | None = None,
               mpp: float | None = None, progress=None) -> dict:
        """Embed and store slides (skipping ones already ingested); re-aggregate touched patients."""
        from eagle_index.ingest import steps as ingestion

        report = ingestion.ingest_files(self, paths, patient, slide_table, mpp, progress)
        self.vectors.sync_all()
        return report

    # -- maintenance ----------------------------------------------------------------------
    def reindex(self, force: bool = False) -> list[dict]:
        out = []
        for info in self.catalog.vector_sets():
            loaded = self.vectors.rebuild(info) if force else self.vectors.get(info.kind, info.signature)
            out.append({"kind": info.kind, "signature": info.signature, "count": loaded.ntotal, "index_type": loaded.index_type})
        return out
