"""The catalog: patients, slides, vectors, labels in one SQL database (DuckDB by default).

Reads run in `Catalog.transaction()` on the caller's thread. Every write is a function handed
to `Catalog.write(fn)`: it runs on the one writer thread (see `store/writer.py`), in one
transaction that commits together or not at all, under the exclusive side of `Catalog.lock`;
a write attempted on any other thread raises. The catalog's own methods return plain values
(ids, numpy arrays, dataclasses); the static helpers that take a session work on ORM rows
inside a transaction and are for the store and service layers only.

The one read path: what readers ask often (vector sets and their ids, the patient directory of
`store/directory.py`, stored query vectors) is kept in memory until the writer's next commit.
Only this process writes the catalog (owner.py), so its commits are the only changes: each one
moves `epoch` on and drops what was kept, except writes declared `bookkeeping` (the job queue's
claims and heartbeats, probe status), which touch none of those tables (checked at flush).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
from sqlalchemy import case, delete, event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from eagle_index.errors import InputError, NotFoundError
from eagle_index.store import schema
from eagle_index.store.directory import PatientDirectory
from eagle_index.store.models import ImportRecord, Label, Patient, Slide, Vector, VectorSet, utcnow
from eagle_index.identifiers import check_identifier, check_label_name, check_label_value
from eagle_index.store.validation import as_vector_matrix
from eagle_index.store.writer import ReadWriteLock, SingleWriter


T = TypeVar("T")

# Tables whose rows readers keep between commits (the directory, vector sets, stored vectors):
# a `bookkeeping` write may not touch them.
CACHED_TABLES = frozenset({"patients", "labels", "slides", "vectors", "vector_sets"})
_MISSING = object()
MAX_KEPT_VECTORS = 20_000  # stored query vectors kept (LRU): 20,000 x 1280 floats = 100 MB at most


@dataclass(frozen=True)
class VectorSetInfo:
    kind: str
    signature: str
    dim: int
    generation: int
    count: int


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


class Catalog:
    """Access to one catalog database: reads on any thread, writes through `write()`."""

    def __init__(self, url: str, path: Path | None = None, create: bool = True):
        self.url = url
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = schema.make_engine(url)
        schema.ensure_current(self.engine, path, create=create)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._commit_listeners: list = []
        self.lock = ReadWriteLock()
        self.writer = SingleWriter()
        event.listen(self._sessions, "before_flush", self._check_flush)
        event.listen(self._sessions, "do_orm_execute", self._check_execute)
        self._tile_listeners: list = []
        # What readers ask often, kept until the writer's next commit (see the module docstring).
        # `_epoch` moves on at each such commit: a reader that computed a value before a commit
        # cannot store it after the commit cleared the cache.
        self._cache: dict = {}
        self._vectors: OrderedDict = OrderedDict()  # (kind, signature, patient id) -> stored vector, LRU
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._epoch = 0

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

        def run() -> T:
            with self.lock.write():
                with self.transaction() as session:
                    session.info["bookkeeping"] = bookkeeping
                    return fn(session)

        return self.writer.run(run)

    def reading(self):
        """The shared side of the lock: hold it across an index search and the reads that follow."""
        return self.lock.read()

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
            with self._cache_lock:
                self._epoch += 1
                self._cache.clear()
                self._vectors.clear()
        for listener in self._commit_listeners if changes else ():
            listener(changes)
        for listener in self._tile_listeners if tile_changes else ():
            listener(tile_changes)

    @property
    def epoch(self) -> int:
        """Moves on at every commit that changed patients, labels, slides or vectors."""
        return self._epoch

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

    def directory(self) -> PatientDirectory:
        """Every patient's ids, labels and slide names (store/directory.py), until the next commit.
        One thread loads it; others asking meanwhile wait for that result instead of loading too."""
        key = ("directory",)
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._load_lock:
            return self._cached(key, self._load_directory)

    def _load_directory(self) -> PatientDirectory:
        with self.engine.connect() as connection:
            return PatientDirectory.load(connection)

    def patient_ids(self, external_ids) -> dict[str, int]:
        ids = self.directory().ids
        return {e: ids[e] for e in external_ids if e in ids}

    def external_ids(self, ids) -> dict[int, str]:
        names = self.directory().names
        return {int(i): names[int(i)] for i in ids if int(i) in names}

    def external_id_map(self) -> dict[int, str]:
        """{patient id: external id} of every patient."""
        return dict(self.directory().names)

    def all_patient_ids(self) -> set[int]:
        return set(self.directory().names)

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

    def patients_holding(self, fingerprints) -> set[int]:
        """Ids of the patients with a slide row of any of these content fingerprints."""
        fingerprints = list(fingerprints)
        if not fingerprints:
            return set()
        with self.transaction() as session:
            return {int(p) for p in session.scalars(select(Slide.patient_id).where(Slide.fingerprint.in_(fingerprints)))}

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

    def slides_of(self, patient_ids) -> dict[int, list[str]]:
        """{patient id: names of its slides that are not superseded}, in the order they were stored."""
        slides = self.directory().slides
        return {int(i): list(slides.get(int(i), ())) for i in patient_ids}

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

    def stored_vector(self, kind: str, signature: str, patient_id: int) -> np.ndarray | None:
        """One patient's raw stored vector of a set (read-only), or None; the last MAX_KEPT_VECTORS asked are kept."""
        key = (kind, signature, int(patient_id))
        epoch = self._epoch  # read before the lookup: a commit in between makes the store below a no-op
        found = self._vectors.get(key)  # lock-free: one dict lookup (request threads would queue on the lock)
        if found is not None:
            return found
        with self.engine.connect() as connection:  # a core point query: a fifth of the ORM path's CPU
            rows = connection.exec_driver_sql(
                "SELECT dim, vector FROM vectors WHERE patient_id = ? AND kind = ? AND signature = ?",
                (int(patient_id), kind, signature)).all()
        if not rows:
            return None
        vector = np.frombuffer(rows[0][1], dtype=np.float32, count=int(rows[0][0])).copy()
        vector.setflags(write=False)
        with self._cache_lock:
            if self._epoch == epoch:
                self._vectors[key] = vector
                while len(self._vectors) > MAX_KEPT_VECTORS:
                    self._vectors.popitem(last=False)
        return vector

    def _cached(self, key, compute):
        epoch = self._epoch
        value = self._cache.get(key, _MISSING)  # lock-free: one dict lookup per read, on every request thread
        if value is not _MISSING:
            return value
        value = compute()
        with self._cache_lock:
            if self._epoch == epoch:
                self._cache[key] = value
        return value

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

    def vector_sets(self, kind: str | None = None) -> list[VectorSetInfo]:
        return list(self._cached(("sets", kind), lambda: tuple(self._vector_sets(kind))))

    def _vector_sets(self, kind: str | None) -> list[VectorSetInfo]:
        with self.transaction() as session:
            query = (
                select(VectorSet.kind, VectorSet.signature, VectorSet.dim, VectorSet.generation, func.count(Vector.id))
                .join(Vector, (Vector.kind == VectorSet.kind) & (Vector.signature == VectorSet.signature), isouter=True)
                .group_by(VectorSet.kind, VectorSet.signature, VectorSet.dim, VectorSet.generation)
                .order_by(VectorSet.kind, VectorSet.signature)
            )
            if kind is not None:
                query = query.where(VectorSet.kind == kind)
            return [VectorSetInfo(*row) for row in session.execute(query)]

    # -- the one vector-set resolver ---------------------------------------------------------
    DEFAULT_KIND = "eagle"

    def default_kind(self) -> str:
        """`eagle` when the catalog has it, else the only kind it has; several others → an error listing them."""
        kinds = sorted({s.kind for s in self.vector_sets()})
        if self.DEFAULT_KIND in kinds or not kinds:
            return self.DEFAULT_KIND
        if len(kinds) == 1:
            return kinds[0]
        raise InputError(f"the catalog holds several vector kinds ({', '.join(kinds)}) and no {self.DEFAULT_KIND!r}: choose one")

    def has_vector(self, info: VectorSetInfo, patient_id: int) -> bool:
        """Membership by id (a binary search in the cached sorted ids), without loading vectors."""
        ids = self.vector_ids(info.kind, info.signature)
        position = int(np.searchsorted(ids, int(patient_id)))
        return position < len(ids) and int(ids[position]) == int(patient_id)

    def resolve_vector_set(self, kind: str | None = None, signature: str | None = None, *,
                           patients: tuple[int, ...] | list[int] = (), dim: int | None = None,
                           describe: str | None = None) -> VectorSetInfo:
        """Which vector set `(kind, signature)` means: the one rule every search, probe, cohort and page uses.

        kind None → `default_kind()`. A named signature must exist. Otherwise, among the sets of
        that kind (of dimension `dim`, holding every patient in `patients`), the largest wins;
        ties go to the smallest signature, so the answer never depends on row order.
        `describe` names the patients in messages (e.g. "patient 'P1'").
        """
        kind = kind or self.default_kind()
        sets = self.vector_sets(kind)
        if not sets:
            kinds = sorted({s.kind for s in self.vector_sets()})
            raise NotFoundError(f"no vectors of kind {kind!r} (kinds in the catalog: {', '.join(kinds) or 'none'})")
        if signature is not None:
            for info in sets:
                if info.signature == signature:
                    return info
            raise NotFoundError(f"no vectors of kind {kind!r} with signature {signature!r} "
                                f"(signatures: {', '.join(s.signature for s in sets)})")
        if dim is not None:
            sets = [s for s in sets if s.dim == dim]
            if not sets:
                raise NotFoundError(f"no stored {kind!r} vectors of dimension {dim}")
        if patients:
            sets = [s for s in sets if all(self.has_vector(s, p) for p in patients)]
            if not sets:
                who = describe or f"{len(patients)} patient(s)"
                held = sorted({s.kind for s in self.vector_sets() if all(self.has_vector(s, p) for p in patients)})
                raise NotFoundError(f"{who} has no {kind!r} vector (vector kinds it has: {', '.join(held) or 'none'})")
        return min(sets, key=lambda s: (-s.count, s.signature))

    def vector_set(self, kind: str, signature: str) -> VectorSetInfo:
        for info in self.vector_sets(kind):
            if info.signature == signature:
                return info
        raise NotFoundError(f"no vectors of kind {kind!r} with signature {signature!r}")

    def load_vectors(self, kind: str, signature: str, patient_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """(patient ids int64 [N], raw vectors float32 [N, D]) of one set, ordered by patient id."""
        with self.transaction() as session:
            query = select(Vector.patient_id, Vector.dim, Vector.vector).where(Vector.kind == kind, Vector.signature == signature)
            if patient_ids is not None:
                query = query.where(Vector.patient_id.in_([int(i) for i in patient_ids]))
            rows = session.execute(query.order_by(Vector.patient_id)).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, 0), dtype=np.float32)
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), rows[0][1])
        return ids, matrix

    def vector_ids(self, kind: str, signature: str) -> np.ndarray:
        """Sorted patient ids of one vector set (read-only array, cached until vectors change)."""
        def compute() -> np.ndarray:
            with self.transaction() as session:
                rows = session.scalars(
                    select(Vector.patient_id).where(Vector.kind == kind, Vector.signature == signature).order_by(Vector.patient_id)
                ).all()
            ids = np.asarray(rows, dtype=np.int64)
            ids.setflags(write=False)
            return ids

        return self._cached(("ids", kind, signature), compute)

    # -- labels -------------------------------------------------------------------
    # Label names match case-insensitively (`tissue` finds `TISSUE`): the one rule of every filter,
    # cohort, probe, vote, evaluation and import, on every front end. A name is stored in the spelling
    # it was first imported with; later spellings of the same name use that one.
    @staticmethod
    def stored_label_name(session: Session, name: str) -> str | None:
        """The spelling the catalog stores label `name` under (exact first, else any case), or None."""
        names = session.scalars(select(Label.name).distinct().where(func.lower(Label.name) == name.lower())).all()
        return name if name in names else (sorted(names)[0] if names else None)

    def label_names(self) -> list[str]:
        """Every label name the catalog holds, sorted."""
        return list(self.directory().label_names)

    def label_name(self, name: str) -> str:
        """The stored spelling of a label name a user gave (any case); unknown: NotFoundError listing the known ones."""
        directory = self.directory()
        stored = directory.stored_label_name(str(name).strip())
        if stored is None:
            known = directory.label_names
            raise NotFoundError(f"unknown label {name!r}; known labels: "
                                f"{', '.join(known) if known else 'none (import a table with `eagle-index labels import`)'}")
        return stored

    def label_values(self, name: str, patient_ids=None) -> dict[int, str]:
        """{patient id: value} of one label (patients without it, or with an empty value, left out); the name in
        any case, an unknown one is a NotFoundError listing the known ones."""
        return self.directory().label_values(self.label_name(name), patient_ids)

    def patients_with_labels(self, labels: dict[str, list[str]]) -> set[int]:
        """Patients whose label NAME has one of the given values, for every NAME (AND over names, OR over values).

        The value "*" matches any value of that label: "has this label". Names match in any case
        (`label_name`); an unknown name is a NotFoundError listing the known ones.
        """
        directory = self.directory()
        wanted = {self.label_name(name): list(values) for name, values in labels.items()}  # every name checked first
        result: set[int] | None = None
        for name, values in wanted.items():
            ids = directory.patients_with(name, values)
            result = ids if result is None else result & ids
            if not result:
                return set()
        return result if result is not None else set()

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

    def labels_of(self, patient_ids) -> dict[int, dict[str, str | None]]:
        labels = self.directory().labels
        return {int(i): dict(labels.get(int(i), {})) for i in patient_ids}

    # -- import records -----------------------------------------------------------------
    @staticmethod
    def already_imported(session: Session, sha256: str) -> ImportRecord | None:
        return session.scalar(select(ImportRecord).where(ImportRecord.sha256 == sha256))

    @staticmethod
    def record_import(session: Session, sha256: str, path: Path, what: str, rows: int) -> None:
        session.add(ImportRecord(sha256=sha256, path=str(path), what=what, rows=rows))

    # -- summary ------------------------------------------------------------------
    def stats(self) -> dict:
        with self.transaction() as session:
            from eagle_index.store.models import Job

            counts = {  # patients and slides that have vectors; inputs that failed are counted apart
                "patients": session.scalar(select(func.count(func.distinct(Vector.patient_id)))),
                "slides": session.scalar(select(func.count(Slide.id)).where(Slide.status.in_(("done", "imported")))),
                "labels": session.scalar(select(func.count(Label.id))),
                "failed": session.scalar(select(func.count(Job.id)).where(Job.state == "failed")),
            }
            by_kind = dict(session.execute(select(Vector.kind, func.count(Vector.id)).group_by(Vector.kind).order_by(Vector.kind)).all())
        return {**{k: int(v or 0) for k, v in counts.items()}, "vectors": {k: int(v) for k, v in by_kind.items()}}
