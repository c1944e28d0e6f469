"""The catalog's reads: one implementation over any connection that runs plain SQL.

Every front end reads patients, labels, slides and vector sets through these methods (the one
read path of issue 22). They speak plain SQL through `read_rows`, so the same code serves two
connections: `Catalog` (store/catalog.py: SQLAlchemy, the writer, the ORM) and `CatalogSnapshot`
(store/snapshot.py: a read-only DuckDB connection for one-shot CLI reads, which must not pay
SQLAlchemy's import, a third of a 0.8 s `stats`; issue 20 item 4).

What readers ask often (vector sets and their ids, the patient directory of store/directory.py,
stored query vectors) is kept in memory until the writer's next commit: `_changed()` (called by
`Catalog.transaction` after such a commit) moves `epoch` on and drops what was kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from eagle_index.errors import CatalogError, InputError, NotFoundError
from eagle_index.store.directory import PatientDirectory
from eagle_index.store.writer import ReadWriteLock

_MISSING = object()
LOAD_ROWS_CHUNK = 20_000  # rows per read of a whole vector set (100 MB of bytes objects at 1280-d)
MAX_KEPT_VECTORS = 20_000  # stored query vectors kept (LRU): 20,000 x 1280 floats = 100 MB at most


@dataclass(frozen=True)
class VectorSetInfo:
    kind: str
    signature: str
    dim: int
    generation: int
    count: int


class CatalogReads:
    """Reads of one catalog, kept between commits; a subclass supplies `read_rows` (and `reading`)."""

    DEFAULT_KIND = "eagle"

    def _init_reads(self) -> None:
        self.lock = ReadWriteLock()  # readers share it; `Catalog.write` takes its exclusive side
        # `_epoch` moves on at each commit readers must see: a reader that computed a value before
        # a commit cannot store it after the commit cleared what was kept.
        self._cache: dict = {}
        self._vectors: OrderedDict = OrderedDict()  # (kind, signature, patient id) -> stored vector, LRU
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._epoch = 0

    def read_rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """All rows of one plain-SQL read (`?` parameters): for the store's modules, never a front end."""
        raise NotImplementedError

    @contextmanager
    def read_snapshot(self):
        """A `read_rows` whose reads all see one committed state (see Catalog.read_snapshot)."""
        raise NotImplementedError
        yield

    def reading(self):
        """The shared side of the lock: hold it across an index search and the reads that follow."""
        return self.lock.read()

    @property
    def epoch(self) -> int:
        """Moves on at every commit that changed patients, labels, slides or vectors."""
        return self._epoch

    def _changed(self) -> None:
        with self._cache_lock:
            self._epoch += 1
            self._cache.clear()
            self._vectors.clear()

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

    # -- patients -----------------------------------------------------------------
    def directory(self) -> PatientDirectory:
        """Every patient's ids, labels and slide names (store/directory.py), until the next commit.
        One thread loads it; others asking meanwhile wait for that result instead of loading too."""
        key = ("directory",)
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._load_lock:
            return self._cached(key, lambda: PatientDirectory.load(self.read_rows))

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

    def patients_holding(self, fingerprints) -> set[int]:
        """Ids of the patients with a slide row of any of these content fingerprints."""
        fingerprints = [str(f) for f in fingerprints]
        if not fingerprints:
            return set()
        marks = ",".join("?" * len(fingerprints))
        return {int(r[0]) for r in self.read_rows(f"SELECT patient_id FROM slides WHERE fingerprint IN ({marks})", tuple(fingerprints))}

    def done_slide_ids(self, patient_id: int) -> dict[str, int]:
        """{slide name: slide id} of a patient's embedded slides (first id per name)."""
        out: dict[str, int] = {}
        for name, sid in self.read_rows("SELECT name, id FROM slides WHERE patient_id = ? AND status = 'done' ORDER BY name, id",
                                    (int(patient_id),)):
            out.setdefault(name, int(sid))
        return out

    def artifact_paths(self, patient_id: int) -> list[str]:
        """Artifact files of a patient's embedded slides, in slide-name order (empty for imported vectors)."""
        return [r[0] for r in self.read_rows("SELECT artifact_path FROM slides WHERE patient_id = ? AND status = 'done' "
                                         "AND artifact_path IS NOT NULL ORDER BY name, id", (int(patient_id),))]

    def cohort_member_ids(self, names) -> set[int]:
        """Patients that are members of every named cohort; an unknown name is a NotFoundError listing the known ones."""
        result: set[int] | None = None
        for name in names:
            found = self.read_rows("SELECT id FROM cohorts WHERE name = ?", (str(name),))
            if not found:
                known = [r[0] for r in self.read_rows("SELECT name FROM cohorts ORDER BY name")]
                raise NotFoundError(f"unknown cohort {name!r} (known: {', '.join(known) or 'none'})")
            ids = {int(r[0]) for r in self.read_rows("SELECT patient_id FROM cohort_members WHERE cohort_id = ?", (int(found[0][0]),))}
            result = ids if result is None else result & ids
        return result if result is not None else set()

    def slides_of(self, patient_ids) -> dict[int, list[str]]:
        """{patient id: names of its slides that are not superseded}, in the order they were stored."""
        slides = self.directory().slides
        return {int(i): list(slides.get(int(i), ())) for i in patient_ids}

    # -- vectors ------------------------------------------------------------------
    def stored_vector(self, kind: str, signature: str, patient_id: int) -> np.ndarray | None:
        """One patient's raw stored vector of a set (read-only), or None; the last MAX_KEPT_VECTORS asked are kept."""
        key = (kind, signature, int(patient_id))
        epoch = self._epoch  # read before the lookup: a commit in between makes the store below a no-op
        found = self._vectors.get(key)  # lock-free: one dict lookup (request threads would queue on the lock)
        if found is not None:
            return found
        rows = self.read_rows("SELECT dim, vector FROM vectors WHERE patient_id = ? AND kind = ? AND signature = ?",
                          (int(patient_id), kind, signature))
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

    def vector_sets(self, kind: str | None = None) -> list[VectorSetInfo]:
        return list(self._cached(("sets", kind), lambda: tuple(self._vector_sets(kind))))

    def _vector_sets(self, kind: str | None) -> list[VectorSetInfo]:
        where, params = ("WHERE s.kind = ?", (kind,)) if kind is not None else ("", ())
        rows = self.read_rows(
            "SELECT s.kind, s.signature, s.dim, s.generation, COUNT(v.id) FROM vector_sets s "
            "LEFT OUTER JOIN vectors v ON v.kind = s.kind AND v.signature = s.signature "
            f"{where} GROUP BY s.kind, s.signature, s.dim, s.generation ORDER BY s.kind, s.signature", params)
        return [VectorSetInfo(str(k), str(s), int(d), int(g), int(n)) for k, s, d, g, n in rows]

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
        if patient_ids is None:
            return self._load_whole_set(kind, signature)
        # a list parameter: DuckDB parses 1,000 literal ids in 10 ms
        rows = self.read_rows("SELECT patient_id, dim, vector FROM vectors WHERE kind = ? AND signature = ? "
                              "AND patient_id IN (SELECT unnest(?::BIGINT[])) ORDER BY patient_id",
                              (kind, signature, [int(i) for i in patient_ids]))
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, 0), dtype=np.float32)
        return ids, _matrix(rows)

    def _load_whole_set(self, kind: str, signature: str) -> tuple[np.ndarray, np.ndarray]:
        """A whole set read in id ranges of `LOAD_ROWS_CHUNK` into one preallocated matrix: the rows of
        one read are Python bytes (as many bytes as the vectors, twice over once joined), so reading 1M
        1280-d vectors at once peaked at 3x their 5 GB and an index build beside it ran out of 24 GB.
        The ranges are read in one snapshot, so a commit meanwhile (an ingest beside a probe's ranking)
        is not seen; the check after each range guards that promise."""
        with self.read_snapshot() as read:
            rows = read("SELECT patient_id FROM vectors WHERE kind = ? AND signature = ? ORDER BY patient_id",
                        (kind, signature))
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if not len(ids):
                return ids, np.zeros((0, 0), dtype=np.float32)
            matrix = None
            for start in range(0, len(ids), LOAD_ROWS_CHUNK):
                part = ids[start:start + LOAD_ROWS_CHUNK]
                rows = read("SELECT patient_id, dim, vector FROM vectors WHERE kind = ? AND signature = ? "
                            "AND patient_id BETWEEN ? AND ? ORDER BY patient_id",
                            (kind, signature, int(part[0]), int(part[-1])))
                if len(rows) != len(part) or rows[0][0] != part[0] or rows[-1][0] != part[-1]:
                    raise CatalogError(f"vector set {kind!r}/{signature!r} changed while it was read")
                block = _matrix(rows)
                if matrix is None:
                    matrix = np.empty((len(ids), block.shape[1]), dtype=np.float32)
                matrix[start:start + len(part)] = block
        return ids, matrix

    def vector_ids(self, kind: str, signature: str) -> np.ndarray:
        """Sorted patient ids of one vector set (read-only array, cached until vectors change)."""
        def compute() -> np.ndarray:
            rows = self.read_rows("SELECT patient_id FROM vectors WHERE kind = ? AND signature = ? ORDER BY patient_id",
                              (kind, signature))
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            ids.setflags(write=False)
            return ids

        return self._cached(("ids", kind, signature), compute)

    # -- labels -------------------------------------------------------------------
    # Label names match case-insensitively (`tissue` finds `TISSUE`): the one rule of every filter,
    # cohort, probe, vote, evaluation and import, on every front end. A name is stored in the spelling
    # it was first imported with; later spellings of the same name use that one.
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

    def labels_of(self, patient_ids) -> dict[int, dict[str, str | None]]:
        labels = self.directory().labels
        return {int(i): dict(labels.get(int(i), {})) for i in patient_ids}

    # -- summary ------------------------------------------------------------------
    def stats(self) -> dict:
        """Patients and slides that have vectors, labels, failed inputs (counted apart), vectors by kind."""
        (patients, slides, labels, failed), = self.read_rows(
            "SELECT (SELECT COUNT(DISTINCT patient_id) FROM vectors), "
            "(SELECT COUNT(*) FROM slides WHERE status IN ('done', 'imported')), "
            "(SELECT COUNT(*) FROM labels), (SELECT COUNT(*) FROM jobs WHERE state = 'failed')")
        by_kind = self.read_rows("SELECT kind, COUNT(*) FROM vectors GROUP BY kind ORDER BY kind")
        return {"patients": int(patients or 0), "slides": int(slides or 0), "labels": int(labels or 0),
                "failed": int(failed or 0), "vectors": {str(k): int(n) for k, n in by_kind}}


def _matrix(rows) -> np.ndarray:
    """Rows of (patient_id, dim, vector bytes) as one float32 [N, D] matrix."""
    return np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), rows[0][1])
