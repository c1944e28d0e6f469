"""The patient directory: every patient's ids, labels and slide names, read in a few bulk queries.

A search hit needs the patient's external id, slide names and labels; a filter needs the
patients holding some label values. Asked of SQL per request, these small round trips cost more
under concurrent requests (SQLAlchemy under the GIL, DuckDB scans) than the vector search itself
(issue 15's profile, docs/benchmarks.md). The catalog's reads (store/catalog_reads.py) keep one `PatientDirectory` until its
writer's next commit (the one invalidation rule: `Catalog.epoch`); every read of patients and
labels is answered from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class PatientDirectory:
    ids: dict[str, int]  # external id -> patient id
    names: dict[int, str]  # patient id -> external id
    labels: dict[int, dict[str, str | None]]  # patient id -> {label name: value}, in label-row order
    slides: dict[int, tuple[str, ...]]  # patient id -> names of its slides that are not superseded, in slide-row order
    label_names: tuple[str, ...]  # every stored label name, sorted

    @classmethod
    def load(cls, rows: Callable[[str], list[tuple]]) -> "PatientDirectory":
        """Read with `rows(sql)`: the plain-SQL runner of a Catalog or a CatalogSnapshot (store/catalog_reads.py)."""
        ids = {str(e): int(i) for e, i in rows("SELECT external_id, id FROM patients")}
        labels: dict[int, dict] = {}
        for pid, name, value in rows("SELECT patient_id, name, value FROM labels ORDER BY id"):
            labels.setdefault(int(pid), {})[name] = value
        slides: dict[int, list[str]] = {}
        for pid, name in rows("SELECT patient_id, name FROM slides WHERE status <> 'superseded' ORDER BY id"):
            slides.setdefault(int(pid), []).append(name)
        names = sorted({n for values in labels.values() for n in values})
        return cls(ids, {v: k for k, v in ids.items()}, labels, {k: tuple(v) for k, v in slides.items()}, tuple(names))

    def stored_label_name(self, name: str) -> str | None:
        """The spelling label `name` is stored under (exact first, else the first of any case), or None."""
        if name in self.label_names:
            return name
        lower = name.lower()
        return next((n for n in self.label_names if n.lower() == lower), None)

    def label_values(self, name: str, patient_ids=None) -> dict[int, str]:
        """{patient id: value} of one stored label name; patients without it or with an empty value left out."""
        pool = self.labels.keys() if patient_ids is None else (int(i) for i in patient_ids)
        out: dict[int, str] = {}
        for pid in pool:
            value = self.labels.get(pid, {}).get(name)
            if value is not None and str(value).strip():
                out[pid] = str(value)
        return out

    def patients_with(self, name: str, values) -> set[int]:
        """Patients whose stored label `name` has one of `values` ("*": any non-empty value)."""
        if "*" in values:
            return {pid for pid, labels in self.labels.items() if labels.get(name) is not None}
        wanted = {str(v) for v in values}
        return {pid for pid, labels in self.labels.items() if labels.get(name) in wanted}
