"""Per-patient facts that every search answer needs, kept in memory until the catalog changes.

A search hit needs the patient's external id, slide names and labels, and a patient query
needs its id and its stored vector: five small SQL round trips per request, which under
concurrent requests cost more in Python (SQLAlchemy, the GIL) than the vector search itself.
`CachedReads` answers them from memory and fetches only what it has not seen.

Invalidation: one process owns the catalog (owner.py), so every change goes through this
process's engine. Any INSERT/UPDATE/DELETE/DDL statement marks its connection; when that
connection commits, the generation is bumped and every cached fact is dropped. A read stores
what it fetched only if no write committed while it ran (the generation is unchanged), so a
reader can never put pre-commit facts back after the drop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from sqlalchemy import event

_WRITES = ("INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "COPY", "TRUNCATE", "MERGE", "UPSERT", "REPLACE",
           "ATTACH", "DETACH", "IMPORT")


class CachedReads:
    def __init__(self, catalog, max_patients: int = 500_000, max_vectors: int = 20_000):
        self.catalog = catalog
        self.max_patients = max_patients
        self.max_vectors = max_vectors
        self.generation = 0
        self._lock = threading.Lock()
        self._reset()
        event.listen(catalog.engine, "before_cursor_execute", self._before_execute)
        event.listen(catalog.engine, "commit", self._on_commit)
        event.listen(catalog.engine, "rollback", self._on_rollback)

    # -- invalidation ------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._slides: dict[int, tuple[str, ...]] = {}
        self._labels: dict[int, dict] = {}
        self._vectors: OrderedDict = OrderedDict()

    @staticmethod
    def _before_execute(conn, cursor, statement, parameters, context, executemany) -> None:
        head = statement.lstrip()[:8].upper()
        if head.startswith(_WRITES):
            conn.info["eagle_wrote"] = True

    def _on_commit(self, conn) -> None:
        if conn.info.pop("eagle_wrote", False):
            self.invalidate()

    @staticmethod
    def _on_rollback(conn) -> None:
        conn.info.pop("eagle_wrote", None)

    def invalidate(self) -> None:
        with self._lock:
            self.generation += 1
            self._reset()

    def _store(self, generation: int, fill) -> None:
        with self._lock:
            if generation != self.generation:
                return  # a write committed while we read: what we read may be stale
            if len(self._names) > self.max_patients:
                self._reset()
            fill()

    # -- reads (same shapes as the Catalog methods they stand for) ---------------------------------------
    def patient_ids(self, external_ids: list[str]) -> dict[str, int]:
        out = {e: self._ids[e] for e in external_ids if e in self._ids}
        missing = [e for e in external_ids if e not in out]
        if missing:
            generation = self.generation
            found = self.catalog.patient_ids(missing)
            self._store(generation, lambda: (self._ids.update(found), self._names.update({v: k for k, v in found.items()})))
            out.update(found)
        return out

    def external_ids(self, ids) -> dict[int, str]:
        ids = [int(i) for i in ids]
        out = {i: self._names[i] for i in ids if i in self._names}
        missing = [i for i in ids if i not in out]
        if missing:
            generation = self.generation
            found = self.catalog.external_ids(missing)
            self._store(generation, lambda: (self._names.update(found), self._ids.update({v: k for k, v in found.items()})))
            out.update(found)
        return out

    def slides_of(self, patient_ids) -> dict[int, list[str]]:
        ids = [int(i) for i in patient_ids]
        cached = {i: self._slides.get(i) for i in ids}
        missing = [i for i, v in cached.items() if v is None]
        if missing:
            generation = self.generation
            found = {i: tuple(v) for i, v in self.catalog.slides_of(missing).items()}
            self._store(generation, lambda: self._slides.update(found))
            cached.update(found)
        return {i: list(cached[i]) for i in ids}

    def labels_of(self, patient_ids) -> dict[int, dict]:
        ids = [int(i) for i in patient_ids]
        cached = {i: self._labels.get(i) for i in ids}
        missing = [i for i, v in cached.items() if v is None]
        if missing:
            generation = self.generation
            found = self.catalog.labels_of(missing)
            self._store(generation, lambda: self._labels.update(found))
            cached.update(found)
        return {i: dict(cached[i]) for i in ids}

    def vector(self, kind: str, signature: str, patient_id: int) -> np.ndarray | None:
        """One patient's raw stored vector of a set (read-only), or None if it has none."""
        key = (kind, signature, int(patient_id))
        found = self._vectors.get(key)
        if found is not None:
            return found
        generation = self.generation
        ids, raw = self.catalog.load_vectors(kind, signature, [int(patient_id)])
        if not len(ids):
            return None
        vector = np.array(raw[0], dtype=np.float32)
        vector.setflags(write=False)

        def fill():
            self._vectors[key] = vector
            while len(self._vectors) > self.max_vectors:
                self._vectors.popitem(last=False)

        self._store(generation, fill)
        return vector
