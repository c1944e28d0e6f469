"""The methods every front end may call, whoever holds the catalog.

`EagleService` (in-process) and `client.RemoteService` (a running owner's API) both
implement `CatalogService`; `tests/test_service_interface.py` runs the same cases on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from eagle_index.results import CatalogStats, Hit, SearchResult, StatusReport


@runtime_checkable
class CatalogService(Protocol):
    def search(self, patient: str | None = None, vector=None, slides: list[Path] | None = None, k: int = 10,
               kind: str | None = None, signature: str | None = None, filters=None, explain: bool = False,
               vote: str | None = None, pairs: int = 5, store: bool = False, mpp: float | None = None) -> SearchResult: ...

    def search_patient(self, external_id: str, k: int = 10, kind: str | None = None, signature: str | None = None,
                       filters=None, explain: bool = False, pairs: int = 5) -> tuple[Hit, ...]: ...

    def stats(self) -> CatalogStats: ...

    def status(self) -> StatusReport: ...

    def import_labels(self, path: Path, create_missing: bool = False): ...

    def set_label(self, patient: str, name: str, value: str | None, source: str = "web") -> dict: ...

    def enqueue(self, paths: list[Path], patient: str | None = None) -> dict:
        """Queue slide files that lie inside the owner's ingest folders (eagle_index/ingest/enqueue.py):
        {"jobs": [{"file", "state", "job"}], "refused": [{"file", "reason"}]}; a path outside is an InputError."""
        ...

    @property
    def annotations(self):
        """`AnnotationService` / `client.RemoteAnnotations`: list, of_slide, get, create, update, delete,
        import_geojson, export_geojson, with the same JSON answers on both."""
        ...

    def close(self) -> None: ...
