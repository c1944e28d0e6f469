"""Per-patient facts that every search answer needs, kept in memory until the catalog changes.

A search hit needs the patient's external id, slide names and labels, and a patient query
needs its id and its stored vector: five small SQL round trips per request, which under
concurrent requests cost more (SQLAlchemy in Python under the GIL, DuckDB scans) than the
vector search itself - the profile of issue 15 (docs/benchmarks.md). `CachedReads` loads the
patient directory (ids and names, labels, slide names: a few bulk queries) once, answers from
memory, and keeps the last query vectors it read.

Invalidation: one process owns the catalog (owner.py), so every change goes through this
process's engine. A write statement (INSERT/UPDATE/DELETE/DDL) that names one of the tables
cached here marks its connection; when that connection commits, the generation is bumped and
everything cached is dropped (writes to other tables - the job queue's heartbeats - are not
changes to these facts). A read stores what it fetched only if no such write committed while it
ran, so a reader can never put pre-commit facts back after the drop.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

import numpy as np
from sqlalchemy import event, text

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|COPY|TRUNCATE|MERGE|UPSERT|REPLACE|ATTACH|DETACH|IMPORT)\b", re.I)
_TABLES = re.compile(r"\b(patients|labels|slides|vectors|vector_sets)\b", re.I)


class CachedReads:
    def __init__(self, catalog, max_vectors: int = 20_000):
        self.catalog = catalog
        self.max_vectors = max_vectors
        self.generation = 0
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._directory: tuple | None = None
        self._vectors: OrderedDict = OrderedDict()
        event.listen(catalog.engine, "before_cursor_execute", self._before_execute)
        event.listen(catalog.engine, "commit", self._on_commit)
        event.listen(catalog.engine, "rollback", self._on_rollback)

    # -- invalidation ------------------------------------------------------------------------------
    @staticmethod
    def _before_execute(conn, cursor, statement, parameters, context, executemany) -> None:
        if _WRITE.match(statement) and _TABLES.search(statement):
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
            self._directory = None
            self._vectors = OrderedDict()

    # -- the patient directory ---------------------------------------------------------------------------
    def directory(self) -> tuple[dict[str, int], dict[int, str], dict[int, dict], dict[int, tuple]]:
        """(external id -> id, id -> external id, id -> labels, id -> slide names) of every patient."""
        found = self._directory
        if found is not None:
            return found
        with self._load_lock:  # one loader; the others wait for its result
            found = self._directory
            if found is not None:
                return found
            generation = self.generation
            found = self._load()
            with self._lock:
                if generation == self.generation:
                    self._directory = found
            return found

    def _load(self) -> tuple:
        ids: dict[str, int] = {}
        labels: dict[int, dict] = {}
        slides: dict[int, list] = {}
        with self.catalog.engine.connect() as connection:
            ids = dict(connection.execute(text("SELECT external_id, id FROM patients")).all())
            for pid, name, value in connection.execute(text("SELECT patient_id, name, value FROM labels ORDER BY id")):
                labels.setdefault(pid, {})[name] = value
            for pid, name in connection.execute(text("SELECT patient_id, name FROM slides WHERE status <> 'superseded' ORDER BY id")):
                slides.setdefault(pid, []).append(name)
        names = {v: k for k, v in ids.items()}
        return ids, names, labels, {k: tuple(v) for k, v in slides.items()}

    # -- reads (same shapes as the Catalog methods they stand for) ---------------------------------------
    def patient_ids(self, external_ids: list[str]) -> dict[str, int]:
        ids = self.directory()[0]
        return {e: ids[e] for e in external_ids if e in ids}

    def external_ids(self, ids) -> dict[int, str]:
        names = self.directory()[1]
        return {int(i): names[int(i)] for i in ids if int(i) in names}

    def slides_of(self, patient_ids) -> dict[int, list[str]]:
        slides = self.directory()[3]
        return {int(i): list(slides.get(int(i), ())) for i in patient_ids}

    def labels_of(self, patient_ids) -> dict[int, dict]:
        labels = self.directory()[2]
        return {int(i): dict(labels.get(int(i), {})) for i in patient_ids}

    def vector(self, kind: str, signature: str, patient_id: int) -> np.ndarray | None:
        """One patient's raw stored vector of a set (read-only), or None if it has none."""
        key = (kind, signature, int(patient_id))
        found = self._vectors.get(key)
        if found is not None:
            return found
        generation = self.generation
        with self.catalog.engine.connect() as connection:  # a core point query: a fifth of the ORM path's CPU
            rows = connection.exec_driver_sql(
                "SELECT dim, vector FROM vectors WHERE patient_id = ? AND kind = ? AND signature = ?",
                (int(patient_id), kind, signature)).all()
        if not rows:
            return None
        raw = np.frombuffer(rows[0][1], dtype=np.float32).reshape(1, rows[0][0])
        vector = np.array(raw[0], dtype=np.float32)
        vector.setflags(write=False)
        with self._lock:
            if generation == self.generation:
                self._vectors[key] = vector
                while len(self._vectors) > self.max_vectors:
                    self._vectors.popitem(last=False)
        return vector
