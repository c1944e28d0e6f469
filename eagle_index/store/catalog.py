"""The catalog: patients, slides, vectors, labels in one SQL database (DuckDB by default).

Reads run in `Catalog.transaction()` on the caller's thread. Every write is a function handed
to `Catalog.write(fn)`: it runs on the one writer thread (see `store/writer.py`), in one
transaction that commits together or not at all, under the exclusive side of `Catalog.lock`;
a write attempted on any other thread raises. The catalog's own methods return plain values
(ids, numpy arrays, dataclasses); the static helpers that take a session work on ORM rows
inside a transaction and are for the store and service layers only.

The one read path: every read of patients, labels, slides and vector sets is `CatalogReads`
(store/catalog_reads.py), plain SQL kept in memory until the writer's next commit. Only this
process writes the catalog (owner.py), so its commits are the only changes: each one moves
`epoch` on and drops what was kept, except writes declared `bookkeeping` (the job queue's claims
and heartbeats, probe status), which touch none of those tables (checked at flush).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
from sqlalchemy import case, delete, event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from eagle_index.errors import InputError, NotFoundError
from eagle_index.store import schema
from eagle_index.store.catalog_reads import CatalogReads, VectorSetInfo  # noqa: F401 - VectorSetInfo re-exported
from eagle_index.store.models import ImportRecord, Label, Patient, Slide, Vector, VectorSet, utcnow
from eagle_index.identifiers import check_identifier, check_label_name, check_label_value
from eagle_index.store.validation import as_vector_matrix
from eagle_index.store.writer import SingleWriter


T = TypeVar("T")

log = logging.getLogger(__name__)
SLOW_WRITE_WAIT_S = 5.0  # a write that waited this long for the writer thread or for readers is logged


def _warn_if_slow(asked: float, started: float, locked: float, readers: str) -> None:
    """Log a write that waited long before it could start (why a UI save or an ingest seemed to hang),
    naming the threads that were reading when it asked for the lock."""
    if locked - asked >= SLOW_WRITE_WAIT_S:
        log.warning("a catalog write waited %.1f s (%.1f s behind earlier writes, %.1f s for readers: %s)",
                    locked - asked, started - asked, locked - started, readers or "none")

# Tables whose rows readers keep between commits (the directory, vector sets, stored vectors):
# a `bookkeeping` write may not touch them.
CACHED_TABLES = frozenset({"patients", "labels", "slides", "vectors", "vector_sets"})


@dataclass(frozen=True)
class VectorChange:
    """Vectors of these patients were written, moving the set from one generation to the next."""

    kind: str
    signature: str
    old_generation: int
    new_generation: int
    patient_ids: tuple[int, ...]


class WriteOutsideWriter(RuntimeError):
    """A catalog write was attempted on a thread other than the writer (a programming error)."""


class Catalog(CatalogReads):
    """Access to one catalog database: reads on any thread (`CatalogReads`), writes through `write()`."""

    def __init__(self, url: str, path: Path | None = None, create: bool = True):
        self.url = url
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = schema.make_engine(url)
        schema.ensure_current(self.engine, path, create=create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._commit_listeners: list = []
        self.writer = SingleWriter()
        event.listen(self._sessions, "before_flush", self._check_flush)
        event.listen(self._sessions, "do_orm_execute", self._check_execute)
        self._tile_listeners: list = []
        self._init_reads()

    @classmethod
    def open(cls, catalog_path: Path, create: bool = True) -> "Catalog":
        return cls(f"duckdb:///{catalog_path.resolve()}", catalog_path, create=create)

    def close(self) -> None:
        self.writer.close()
        self.engine.dispose()

    # -- the one writer ---------------------------------------------------------------
    def write(self, fn: Callable[[Session], T], bookkeeping: bool = False) -> T:
        """Run `fn(session)` on the writer thread in one transaction; its result, or its exception.

        Derived indexes follow the commit before the exclusive lock is released, so readers
        never see a catalog and an index that disagree. Its commit moves `epoch` on (what readers
        kept is dropped) unless `bookkeeping`: a write to the job queue or probe status only, which
        may not change patients, labels, slides or vectors (WriteOutsideWriter if it tries).
        """
        if not self.writer.on_writer_thread() and self.lock.holds_read():
            raise WriteOutsideWriter("a catalog write was requested while holding the read lock")

        asked = time.monotonic()

        def run() -> T:
            started, readers = time.monotonic(), self.lock.describe_readers()
            with self.lock.write():
                _warn_if_slow(asked, started, time.monotonic(), readers)
                with self.transaction() as session:
                    session.info["bookkeeping"] = bookkeeping
                    return fn(session)

        return self.writer.run(run)

    def read_rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self.engine.connect() as connection:  # a core statement: a fifth of the ORM path's CPU
            return connection.exec_driver_sql(sql, params).all()

    @contextmanager
    def read_snapshot(self) -> Iterator[Callable[..., list[tuple]]]:
        """`read_rows` for several reads that must see one committed state: they share one connection
        and its one transaction (DuckDB's snapshot), so a commit between them is not seen."""
        with self.engine.connect() as connection:
            yield lambda sql, params=(): connection.exec_driver_sql(sql, params).all()

    def _check_flush(self, session, _context, _instances) -> None:
        if (session.new or session.dirty or session.deleted) and not self.writer.on_writer_thread():
            raise WriteOutsideWriter("catalog rows changed outside Catalog.write()")
        if session.info.get("bookkeeping"):
            touched = {type(row).__tablename__ for row in (*session.new, *session.dirty, *session.deleted)}
            if touched & CACHED_TABLES:
                raise WriteOutsideWriter(f"a bookkeeping write changed {', '.join(sorted(touched & CACHED_TABLES))}")

    def _check_execute(self, state) -> None:
        if not (state.is_insert or state.is_update or state.is_delete):
            return
        if not self.writer.on_writer_thread():
            raise WriteOutsideWriter("catalog write statement outside Catalog.write()")
        table = getattr(getattr(state.statement, "table", None), "name", None)
        if state.session.info.get("bookkeeping") and table in CACHED_TABLES:
            raise WriteOutsideWriter(f"a bookkeeping write changed {table}")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed together, or rolled back on any error.

        After a successful commit, listeners (the vector store) learn which vector sets
        changed, so derived indexes can follow without a rebuild.
        """
        with self._sessions() as session:
            with session.begin():
                yield session
            changes = session.info.pop("vector_changes", [])
            tile_changes = session.info.pop("tile_changes", [])
            wrote = session.info.pop("bookkeeping", True) is False  # set by write(): a change readers must see
        if wrote or changes:
            self._changed()
        for listener in self._commit_listeners if changes else ():
            listener(changes)
        for listener in self._tile_listeners if tile_changes else ():
            listener(tile_changes)

    def add_commit_listener(self, listener) -> None:
        self._commit_listeners.append(listener)

    def add_tile_listener(self, listener) -> None:
        """Called after a commit that changed tile tokens (the tile index follows; see store/tiles_repo.py)."""
        self._tile_listeners.append(listener)

    # -- patients ---------------------------------------------------------------
    @staticmethod
    def patient_id(session: Session, external_id: str, create: bool = False) -> int:
        external_id = str(external_id).strip()
        if not external_id:
            raise InputError("empty patient id")
        found = session.scalar(select(Patient.id).where(Patient.external_id == external_id))
        if found is not None:
            return found
        if not create:
            raise NotFoundError(f"unknown patient {external_id!r}")
        check_identifier("patient id", external_id)  # the last line of defence: entry points check first, naming their source
        patient = Patient(external_id=external_id)
        session.add(patient)
        session.flush()
        return patient.id

    # -- slides -------------------------------------------------------------------
    @staticmethod
    def add_slide(session: Session, patient_id: int, name: str, fingerprint: str, **fields) -> int:
        existing = session.scalar(select(Slide.id).where(Slide.fingerprint == fingerprint))
        if existing is not None:
            return existing
        slide = Slide(patient_id=patient_id, name=name, fingerprint=fingerprint, **fields)
        session.add(slide)
        session.flush()
        return slide.id

    @staticmethod
    def slide_by_fingerprint(session: Session, fingerprint: str) -> Slide | None:
        return session.scalar(select(Slide).where(Slide.fingerprint == fingerprint))

    @staticmethod
    def upsert_slide(session: Session, fingerprint: str, **fields) -> int:
        """Create the slide row, or update it (a retried or re-ingested file)."""
        slide = session.scalar(select(Slide).where(Slide.fingerprint == fingerprint))
        if slide is None:
            slide = Slide(fingerprint=fingerprint, **fields)
            session.add(slide)
        else:
            for key, value in fields.items():
                setattr(slide, key, value)
        session.flush()
        return slide.id

    @staticmethod
    def delete_slides(session: Session, slide_ids) -> int:
        """Delete slide rows with what hangs on them (inside the caller's write): their tile rows, and their
        annotations once no slide row of the same patient and name is left (annotations_repo). The patient's
        vectors are the caller's to re-aggregate or drop. Returns slide rows deleted."""
        from eagle_index.store import annotations_repo, tiles_repo

        ids = [int(i) for i in slide_ids]
        if not ids:
            return 0
        tiles_repo.remove_slides_tiles(session, ids)
        annotations_repo.remove_for_slides(session, ids)
        return session.execute(delete(Slide).where(Slide.id.in_(ids))).rowcount or 0

    @staticmethod
    def done_artifacts(session: Session, patient_id: int) -> list[str]:
        """Artifact paths of a patient's embedded slides, in slide-name order."""
        rows = session.execute(
            select(Slide.artifact_path).where(Slide.patient_id == patient_id, Slide.status == "done", Slide.artifact_path.is_not(None)).order_by(Slide.name, Slide.id)
        )
        return [r[0] for r in rows]

    # -- vectors ------------------------------------------------------------------
    @staticmethod
    def put_vectors(
        session: Session,
        kind: str,
        signature: str,
        patient_ids: list[int],
        matrix: np.ndarray,
        source: str,
        provenance: dict | None = None,
    ) -> int:
        """Insert or replace one vector per patient; bump the set's generation once."""
        vector_set = session.scalar(select(VectorSet).where(VectorSet.kind == kind, VectorSet.signature == signature))
        matrix = as_vector_matrix(matrix, vector_set.dim if vector_set else None, source)
        if len(patient_ids) != len(matrix):
            raise InputError(f"{source}: {len(patient_ids)} patients but {len(matrix)} vectors")
        if len(set(patient_ids)) != len(patient_ids):
            raise InputError(f"{source}: the same patient appears more than once")
        if vector_set is None:
            vector_set = VectorSet(kind=kind, signature=signature, dim=int(matrix.shape[1]), generation=0,
                                   provenance=json.dumps(provenance) if provenance else None)
            session.add(vector_set)
        existing = dict(session.execute(select(Vector.patient_id, Vector.id).where(
            Vector.kind == kind, Vector.signature == signature, Vector.patient_id.in_(patient_ids))).all())
        replaced = {existing[pid]: row.tobytes() for pid, row in zip(patient_ids, matrix) if pid in existing}
        if replaced:  # one UPDATE for all (the ORM's one per row costs DuckDB about a millisecond each, in the writer)
            table = Vector.__table__
            session.execute(update(table).where(table.c.id.in_(list(replaced))).values(
                vector=case(replaced, value=table.c.id), source=source, created_at=utcnow()))
        for patient_id, row in zip(patient_ids, matrix):
            if patient_id not in existing:
                session.add(Vector(patient_id=patient_id, kind=kind, signature=signature, dim=int(matrix.shape[1]),
                                   vector=row.tobytes(), source=source))
        vector_set.generation += 1
        vector_set.updated_at = utcnow()
        session.flush()
        session.info.setdefault("vector_changes", []).append(
            VectorChange(kind, signature, vector_set.generation - 1, vector_set.generation, tuple(int(i) for i in patient_ids))
        )
        return vector_set.generation

    @staticmethod
    def delete_vectors(session: Session, kind: str, signature: str, patient_ids: list[int]) -> int:
        """Remove these patients' vectors from one set; bump its generation once (no-op if none)."""
        vector_set = session.scalar(select(VectorSet).where(VectorSet.kind == kind, VectorSet.signature == signature))
        if vector_set is None or not patient_ids:
            return vector_set.generation if vector_set is not None else 0
        ids = [int(i) for i in patient_ids]
        session.execute(delete(Vector).where(Vector.kind == kind, Vector.signature == signature, Vector.patient_id.in_(ids)))
        vector_set.generation += 1
        vector_set.updated_at = utcnow()
        session.flush()
        session.info.setdefault("vector_changes", []).append(
            VectorChange(kind, signature, vector_set.generation - 1, vector_set.generation, tuple(ids)))
        return vector_set.generation

    # -- labels (stored in the spelling first imported; CatalogReads.label_name matches any case) --
    @staticmethod
    def stored_label_name(session: Session, name: str) -> str | None:
        """The spelling the catalog stores label `name` under (exact first, else any case), or None."""
        names = session.scalars(select(Label.name).distinct().where(func.lower(Label.name) == name.lower())).all()
        return name if name in names else (sorted(names)[0] if names else None)

    @classmethod
    def put_label(cls, session: Session, patient_id: int, name: str, value: str | None, source: str) -> None:
        name = check_label_name(name)
        if value is not None and str(value).strip():
            value = check_label_value(str(value), name=name)
        name = cls.stored_label_name(session, name) or name
        row = session.scalar(select(Label).where(Label.patient_id == patient_id, Label.name == name))
        if row is None:
            session.add(Label(patient_id=patient_id, name=name, value=value, source=source))
        else:
            row.value, row.source, row.created_at = value, source, utcnow()

    # -- import records -----------------------------------------------------------------
    @staticmethod
    def already_imported(session: Session, sha256: str) -> ImportRecord | None:
        return session.scalar(select(ImportRecord).where(ImportRecord.sha256 == sha256))

    @staticmethod
    def record_import(session: Session, sha256: str, path: Path, what: str, rows: int) -> None:
        session.add(ImportRecord(sha256=sha256, path=str(path), what=what, rows=rows))
