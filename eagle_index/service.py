"""The one facade the CLI, the daemon and the web app call.

Front ends only parse input and render output; everything they can do is a method here.
The service owns one catalog connection and the FAISS indexes derived from it.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING

from pathlib import Path

from eagle_index.config import Settings
from eagle_index.errors import ModelError, NotFoundError
from eagle_index.results import CatalogStats, Hit, IndexSummary, IngestReport, SearchResult, StatusReport, VectorSetSummary

if TYPE_CHECKING:
    from eagle_index.importing import ImportReport

log = logging.getLogger(__name__)


class EagleService:
    """Opens the catalog and the models lazily: `embed` needs neither a catalog nor an index."""

    def __init__(self, settings: Settings, create: bool = True, read_only: bool = False):
        """`read_only`: a one-shot reader (a CLI `stats` or `search`) opens a `CatalogSnapshot`
        (store/snapshot.py: the same reads without SQLAlchemy's import); it cannot write."""
        self.settings = settings
        self._create = create and not read_only
        self._read_only = read_only
        # Set by the owner while Ray workers embed for it (eagle_index.cluster): () -> list of
        # {"id", "node", "device", "slides_done", "seconds_per_slide"}; shown by `status`.
        self.worker_stats = None
        self._query_models: dict[str, object] = {}  # preset -> LoadedModels that encode queries (query_models)

    @cached_property
    def catalog(self):
        """The `Catalog` (store/catalog.py), or a read-only `CatalogSnapshot` for a `read_only` service."""
        from eagle_index.owner import refuse_if_owned

        refuse_if_owned(self.settings.data_dir)
        if not self._create and not self.settings.catalog_path.exists():  # a mistyped folder is not a new archive
            raise NotFoundError(f"no catalog at {self.settings.data_dir} "
                                "(create one with `eagle-index db upgrade` or by importing)")
        if self._read_only:
            from eagle_index.store.snapshot import CatalogSnapshot

            return CatalogSnapshot(self.settings.catalog_path)
        from eagle_index.store.catalog import Catalog

        return Catalog.open(self.settings.catalog_path, create=self._create)

    @cached_property
    def jobs(self):
        """The ingestion queue (used by the daemon/server and the status command)."""
        import os
        import socket

        from eagle_index.store.jobs import JobQueue

        return JobQueue(self.catalog, worker_id=f"{socket.gethostname()}:{os.getpid()}")

    def status(self) -> StatusReport:
        """Queue counts, running job and progress, recent failures, throughput, index size."""
        from eagle_index.store import schema

        return StatusReport(
            jobs=self.jobs.summary(),
            index=tuple(IndexSummary(s.kind, s.signature, s.count, s.dim) for s in self.catalog.vector_sets()),
            patients=self.catalog.stats()["patients"],
            workers=tuple(self.worker_stats() if self.worker_stats is not None else ()),
            schema={"current": schema.current_revision(self.catalog.engine), "head": schema.head_revision()})

    @cached_property
    def vectors(self):
        """The FAISS indexes of the vector sets, following the catalog (store/vectors.py)."""
        from eagle_index.store.vectors import VectorStore

        settings = self.settings.index
        if self._read_only:  # a one-shot reader searches once and exits: reading a whole refine file in would only compete
            settings = settings.model_copy(update={"lean_warm_fraction": 0.0})
        return VectorStore(self.settings.index_dir, self.catalog, settings)

    @cached_property
    def models(self):
        """The three models, loaded once per process (strict loading, digests checked)."""
        from eagle_index.models import load_models

        return load_models(self.settings)

    def query_models(self, signatures):
        """The models that encode a query (slide, region, image) against vectors of `signatures`.

        The preset `--models` named when the user gave one; else the preset the archive's vectors
        were made with (`models.signature_preset`: a demo archive's `tiny:` vectors get the tiny
        models, not a search for official weights). Vectors of several presets: an `InputError`
        asking for `--models`.
        """
        from eagle_index.errors import InputError
        from eagle_index.models import load_models, signature_preset

        presets = sorted({signature_preset(str(s)) for s in signatures})
        if "models" in self.settings.model_fields_set or not presets or presets == [self.settings.models]:
            return self.models
        if len(presets) > 1:
            names = ", ".join("real" if p == "default" else p for p in presets)
            raise InputError(f"the archive holds vectors made with the model presets {names}: "
                             "choose the one to encode the query with --models")
        preset = presets[0]
        if preset not in self._query_models:
            self._query_models[preset] = load_models(self.settings.model_copy(update={"models": preset}))
        return self._query_models[preset]

    # Topic services: each lives in its own module and gets only what it uses (the catalog, the
    # vector indexes, settings, a sibling service, the query models as a function), never this
    # facade, which the front ends still call as one object.
    @cached_property
    def searcher(self):
        from eagle_index.search import SearchService

        return SearchService(self.settings, self.catalog, self.vectors, self.query_models, self.embed, self.ingest)

    @cached_property
    def cohorts(self):
        from eagle_index.cohorts import CohortService

        return CohortService(self.settings, self.catalog, self.vectors)

    @cached_property
    def browse(self):
        """Read-only listings for pages and the API (patients, slides, labels, files)."""
        from eagle_index.store.listing import Listing

        return Listing(self.catalog)

    @cached_property
    def probes(self):
        from eagle_index.probes import ProbeService

        return ProbeService(self.catalog)

    @cached_property
    def viewer(self):
        """Deep Zoom tiles, overlays and the compare view of the slide viewer."""
        from eagle_index.viewer import ViewerService

        return ViewerService(self.settings, self.catalog, self.searcher, self.browse)

    @cached_property
    def media(self):
        """Thumbnails, tile images and upload previews as PNG bytes, a patient's selected tiles, a slide's
        tiles (eagle_index/media.py): ids and coordinates in, never URLs out."""
        from eagle_index.media import MediaService

        return MediaService(self.settings, self.viewer, self.browse, self.searcher.stored_tiles)

    @cached_property
    def regions(self):
        """Region search over stored tile tokens (eagle_index/region_search.py)."""
        from eagle_index.region_search import RegionSearchService

        return RegionSearchService(self.settings, self.catalog, self.searcher, self.annotations, self.query_models)

    @cached_property
    def annotations(self):
        """Annotations of slides: QuPath GeoJSON in and out, the viewer's drawings (eagle_index/annotations.py)."""
        from eagle_index.annotations import AnnotationService

        return AnnotationService(self.catalog)

    def __enter__(self) -> "EagleService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if "vectors" in self.__dict__:
            self.vectors.flush()
        if "regions" in self.__dict__ and "index" in self.regions.__dict__:
            self.regions.index.flush()
        if "catalog" in self.__dict__:
            self.catalog.close()

    # -- overview ---------------------------------------------------------------------
    def stats(self) -> CatalogStats:
        counts = self.catalog.stats()
        return CatalogStats(counts["patients"], counts["slides"], counts["labels"], counts["failed"], counts["vectors"],
                            tuple(VectorSetSummary(s.kind, s.signature, s.dim, s.count, s.generation) for s in self.catalog.vector_sets()))

    # -- search -------------------------------------------------------------------------
    def search_patient(self, external_id: str, k: int = 10, kind: str | None = None, signature: str | None = None,
                       filters=None, explain: bool = False, pairs: int = 5) -> tuple[Hit, ...]:
        """The k most similar other patients to a stored patient, by cosine similarity (the hits only)."""
        return self.searcher.search_patient(external_id, k, kind, signature, filters, explain=explain, pairs=pairs).hits

    def search(self, patient: str | None = None, vector=None, slides: list[Path] | None = None, k: int = 10,
               kind: str | None = None, signature: str | None = None, filters=None, explain: bool = False,
               vote: str | None = None, pairs: int = 5, store: bool = False, mpp: float | None = None) -> SearchResult:
        """One search entry for every front end: by stored patient, by vector, or by slide files.

        `filters` is an `eagle_index.search.SearchFilters` (None: no filter). Slides are embedded
        on the fly (stored first with store=True); `patient` then names the slides' patient.
        """
        from eagle_index.errors import InputError

        if (vector is not None) + bool(slides) + (patient is not None and not slides) != 1:
            raise InputError("give exactly one query: a patient, a vector or slide files")
        if store and not slides:
            raise InputError("storing only applies to slide queries")
        if slides:
            return self.searcher.search_slides(list(slides), k, kind, patient, filters, explain, vote, pairs, store, mpp)
        if vector is not None:
            return self.searcher.search_vector(vector, k, kind, signature, filters, vote)
        return self.searcher.search_patient(patient, k, kind, signature, filters, explain, vote, pairs)

    def slide_candidates(self, artifact_path: str | Path):
        """A stored slide's top candidates (coords, attention, class tokens) from its artifact."""
        from eagle_index.store.artifacts import read_slide_candidates

        return read_slide_candidates(Path(artifact_path))

    # -- imports ------------------------------------------------------------------------
    def import_embeddings(self, paths: list[Path], kind: str | None = None, signature: str | None = None,
                          slide_table: Path | None = None) -> "ImportReport":
        from eagle_index import importing

        report = importing.import_embeddings(self.catalog, paths, kind, signature, slide_table)
        self.vectors.sync_all()
        return report

    def import_features(self, slide_table: Path, ctranspath_dir: Path, virchow2_dir: Path | None = None,
                        progress=None) -> "ImportReport":
        from eagle_index import importing

        chief, note = self._try_load_chief()
        report = importing.import_features(self.catalog, self.settings, slide_table, ctranspath_dir, virchow2_dir, chief,
                                           progress=progress)
        if note:
            report.notes.insert(0, note)
        self.vectors.sync_all()
        return report

    def import_labels(self, path: Path, create_missing: bool = False) -> "ImportReport":
        from eagle_index import importing

        return importing.import_labels(self.catalog, path, create_missing)

    def set_label(self, patient: str, name: str, value: str | None, source: str = "web") -> dict[str, str | None]:
        """Add or replace one label of a stored patient (None clears its value); the patient's labels after."""
        catalog = self.catalog

        def write(session) -> int:
            pid = catalog.patient_id(session, patient)
            catalog.put_label(session, pid, name, value, source)
            return pid

        pid = catalog.write(write)
        return catalog.labels_of([pid])[pid]

    def _try_load_chief(self):
        """CHIEF when its weights are available; imports still store mean-ctranspath without it."""
        from eagle_index.models import load_models

        try:
            return load_models(self.settings, only=["chief"]).chief, None
        except ModelError as exc:
            return None, f"CHIEF not loaded ({exc})"

    # -- embedding and ingestion --------------------------------------------------------------
    def embed(self, slides: list[Path], patient: str | None = None, artifacts_dir: Path | None = None,
              mpp: float | None = None, progress=None, models=None):
        """Embed slides without touching the catalog: {patient: PatientVectors}, and the provenance.

        `models`: loaded models to use instead of the settings' preset (a query's, `query_models`)."""
        from eagle_index.ingest import steps as ingestion

        return ingestion.embed_files((lambda: models) if models is not None else (lambda: self.models), self.settings,
                                     slides, patient, artifacts_dir, mpp, progress)

    def ingest(self, paths: list[Path], patient: str | None = None, slide_table: Path | None = None,
               mpp: float | None = None, progress=None) -> IngestReport:
        """Embed and store slides (skipping ones already ingested); re-aggregate touched patients."""
        from eagle_index.errors import InputError
        from eagle_index.ingest import steps as ingestion

        if not ingestion.find_slides(paths):  # before the catalog is opened (or created)
            raise InputError(f"no slides found in {', '.join(str(p) for p in paths)}")
        self.regions.follow()  # loaded tile indexes follow the ingest's commits in place
        report = ingestion.ingest_files(self.ingest_context(), paths, patient, slide_table, mpp, progress)
        self.vectors.sync_all()
        return report

    def enqueue(self, paths: list[str | Path], patient: str | None = None, roots=(), resolver=None) -> dict:
        """Queue the slide files of `paths` that lie inside `roots`, the folders this owner ingests from
        (none: every path is refused): {"jobs": [{"file", "state", "job"}], "refused": [{"file", "reason"}]}.
        A path outside them, missing or not a file is `PathRefused` (an InputError). `resolver` names
        each slide's patient when `patient` is not given (default: the file name)."""
        from eagle_index.ingest.enqueue import enqueue_paths

        return enqueue_paths(self.jobs, list(paths), roots, patient, resolver).as_dict()

    def ingest_context(self):
        """What the ingestion steps and workers use (`ingest.steps.IngestContext`): settings, catalog,
        job queue, models on demand, the FAISS sync."""
        from eagle_index.ingest.steps import IngestContext

        return IngestContext(self.settings, self.catalog, self.jobs, lambda: self.models, self.vectors.sync_all)

    # -- maintenance ----------------------------------------------------------------------
    def schema_revision(self) -> tuple[str | None, str]:
        """(the catalog's Alembic revision or None when empty, the newest revision); opens no service catalog."""
        from eagle_index.store import schema

        engine = schema.make_engine(self.settings.catalog_url)
        try:
            return schema.current_revision(engine), schema.head_revision()
        finally:
            engine.dispose()

    def upgrade_schema(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Migrate the catalog in place (creating it if missing): (revision before, revision after)."""
        from eagle_index.store import schema

        self.settings.catalog_path.parent.mkdir(parents=True, exist_ok=True)
        engine = schema.make_engine(self.settings.catalog_url)
        try:
            before = schema.current_revision(engine)
            try:
                schema.upgrade(engine, revision)
            except Exception as exc:  # alembic.util.CommandError: an unknown revision
                from alembic.util import CommandError

                from eagle_index.errors import InputError

                if isinstance(exc, CommandError):
                    raise InputError(f"revision {revision!r}: {exc}") from None
                raise
            return before, schema.current_revision(engine)
        finally:
            engine.dispose()

    def reindex(self, force: bool = False) -> list[dict]:
        out = []
        for info in self.catalog.vector_sets():
            loaded = self.vectors.rebuild(info) if force else self.vectors.get(info.kind, info.signature)
            out.append({"kind": info.kind, "signature": info.signature, "count": loaded.ntotal, "index_type": loaded.index_type})
        out += self.regions.sync(force)  # tile indexes (region search), after backfilling pre-0005 slides
        return out
