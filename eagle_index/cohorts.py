"""Cohorts: saved definitions, materialised members, exports, duplicate/leakage reports, 2-D maps.

A cohort is a named definition (label filters, membership of other cohorts, optional seed
patients with a similarity threshold, optional probe with a probability threshold) and the
member list it gave when last materialised (`create` and `refresh`), with a timestamp.
Materialising reads other cohorts' *stored* members; it does not refresh them.

Member scores: the best cosine similarity to any seed when seeds are given, else the probe
probability when a probe is given, else none.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eagle_index.errors import InputError, NotFoundError
from eagle_index.identifiers import check_identifier
from eagle_index.atomic import atomic_path
from eagle_index.results import CohortMember, CohortPreview, CohortSummary
from eagle_index.search import LOAD_CHUNK, SearchFilters, allowed_ids, parse_label_filters
from eagle_index.store import cohorts_repo as repo
from eagle_index.store.validation import l2_normalized

log = logging.getLogger(__name__)

DEFINITION_VERSION = 1
EXPORT_FORMATS = ("stamp", "clinical", "eagle-h5", "parquet")
DUPLICATE_EXACT_LIMIT = 50_000  # above this many vectors, near-duplicate pairs come from the index
UMAP_PARAMS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}  # as in the EAGLE paper


@dataclass(frozen=True)
class CohortDefinition:
    """What a cohort is: filters, seeds with a similarity floor, probe with a probability floor."""

    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cohorts: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    min_similarity: float | None = None
    probe: str | None = None
    min_probability: float | None = None
    kind: str = "eagle"
    signature: str | None = None

    @classmethod
    def build(cls, labels=(), cohorts=(), seeds=(), min_similarity=None, probe=None, min_probability=None,
              kind="eagle", signature=None) -> "CohortDefinition":
        seeds = tuple(dict.fromkeys(str(s) for s in seeds or ()))
        if seeds and min_similarity is None:
            raise InputError("seed patients need a similarity threshold (--min-similarity)")
        if min_similarity is not None and not seeds:
            raise InputError("--min-similarity needs seed patients (--seed)")
        if min_similarity is not None and not -1.0 <= float(min_similarity) <= 1.0:
            raise InputError(f"min similarity {min_similarity} is not a cosine in [-1, 1]")
        if min_probability is not None and not probe:
            raise InputError("--min-probability needs a probe (--probe)")
        if probe and min_probability is None:
            min_probability = 0.5
        if min_probability is not None and not 0.0 <= float(min_probability) <= 1.0:
            raise InputError(f"min probability {min_probability} is not in [0, 1]")
        return cls(parse_label_filters(labels), tuple(cohorts or ()), seeds,
                   None if min_similarity is None else float(min_similarity), probe or None,
                   None if min_probability is None else float(min_probability), kind, signature)

    @classmethod
    def from_dict(cls, data: dict) -> "CohortDefinition":
        data = {k: v for k, v in dict(data).items() if k != "version"}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown cohort definition field(s): {', '.join(sorted(unknown))}")
        return cls.build(**data)

    def as_dict(self) -> dict:
        return {"version": DEFINITION_VERSION, "labels": {k: list(v) for k, v in self.labels.items()},
                "cohorts": list(self.cohorts), "seeds": list(self.seeds), "min_similarity": self.min_similarity,
                "probe": self.probe, "min_probability": self.min_probability, "kind": self.kind, "signature": self.signature}

    @property
    def filters(self) -> SearchFilters:
        return SearchFilters(labels=self.labels, cohorts=self.cohorts)


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64] or "cohort"


def pairs_above(a: np.ndarray, ids_a: np.ndarray, b: np.ndarray, ids_b: np.ndarray, threshold: float,
                block: int = 2048) -> list[tuple[int, int, float]]:
    """(id_a, id_b, cosine) of every pair of normalized rows with cosine >= threshold and id_a != id_b.

    When the two sets are the same rows (a is b), each unordered pair is returned once (id_a < id_b).
    """
    same = a is b
    found_a, found_b, found_s = [], [], []
    ids_a, ids_b = np.asarray(ids_a, np.int64), np.asarray(ids_b, np.int64)
    for start in range(0, len(a), block):
        sims = a[start:start + block] @ b.T
        rows, cols = np.nonzero(sims >= threshold)
        pa, pb = ids_a[start + rows], ids_b[cols]
        keep = (pa < pb) if same else (pa != pb)
        found_a.append(pa[keep])
        found_b.append(pb[keep])
        found_s.append(sims[rows[keep], cols[keep]])
    if not found_a:
        return []
    pa, pb, ps = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)
    return list(zip(pa.tolist(), pb.tolist(), ps.astype(np.float64).tolist()))


def duplicate_groups(pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components of the near-duplicate graph (each a sorted list of ids, largest first)."""
    parent: dict[int, int] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g))


class CohortService:
    """Cohort operations; front ends call it through `EagleService.cohorts`."""

    def __init__(self, settings, catalog, vectors):
        self.settings, self.catalog, self.vectors = settings, catalog, vectors

    # -- definitions and members -------------------------------------------------------------
    def create(self, name: str, definition: CohortDefinition | dict | None = None, replace: bool = False, **fields) -> CohortSummary:
        """Save a definition and materialise it. Give a CohortDefinition, its dict, or its fields
        (labels=["organ=lung"], cohorts=[...], seeds=[...], min_similarity=, probe=, min_probability=, kind=, signature=)."""
        if not (name or "").strip():
            raise InputError("a cohort needs a name")
        name = check_identifier("cohort name", name)  # addressable: /api/v1/cohorts/<name>; never '..'
        if definition is None:
            if fields.get("kind") is None:
                fields["kind"] = self.catalog.default_kind()
            definition = CohortDefinition.build(**fields)
        elif isinstance(definition, dict):
            definition = CohortDefinition.from_dict(definition)
        if name in definition.cohorts:
            raise InputError(f"cohort {name!r} cannot be defined by its own members")
        definition, members = self._materialise(definition)
        row = repo.save_cohort(self.catalog, name, definition.as_dict(), members, create=True, replace=replace)
        return self._summary(row)

    def preview(self, definition: CohortDefinition | dict, limit: int = 20) -> CohortPreview:
        """Materialise a definition without saving it: member count, resolved definition, first members."""
        if isinstance(definition, dict):
            definition = CohortDefinition.from_dict(definition)
        resolved, members = self._materialise(definition)
        first = members[:limit]
        names = self.catalog.external_ids([pid for pid, _ in first])
        return CohortPreview(len(members), resolved.as_dict(), tuple(CohortMember(names[pid], score) for pid, score in first))

    def refresh(self, name: str) -> CohortSummary:
        """Materialise a saved definition again (new member list and timestamp)."""
        row = repo.get_cohort(self.catalog, name)
        definition, members = self._materialise(CohortDefinition.from_dict(row.definition))
        return self._summary(repo.save_cohort(self.catalog, name, definition.as_dict(), members, create=False))

    def delete(self, name: str) -> None:
        repo.delete_cohort(self.catalog, name)

    def list(self) -> list[CohortSummary]:
        return [self._summary(row) for row in repo.list_cohorts(self.catalog)]

    def show(self, name: str, limit: int | None = None) -> CohortSummary:
        """Definition, timestamps and members (patient, score, labels; best score first)."""
        row = repo.get_cohort(self.catalog, name)
        members = repo.cohort_members(self.catalog, name)
        shown = members if limit is None else members[:limit]
        labels = self.catalog.labels_of([pid for pid, _, _ in shown])
        return dataclasses.replace(self._summary(row), members=tuple(CohortMember(ext, score, labels[pid]) for pid, ext, score in shown))

    def members(self, name: str) -> list[str]:
        return [ext for _, ext, _ in repo.cohort_members(self.catalog, name)]

    @staticmethod
    def _summary(row: repo.CohortRow) -> CohortSummary:
        return CohortSummary(row.name, row.definition, row.member_count, _iso(row.materialized_at), _iso(row.created_at),
                             _iso(row.updated_at))

    def _materialise(self, definition: CohortDefinition) -> tuple[CohortDefinition, list[tuple[int, float | None]]]:
        allowed = allowed_ids(self.catalog, definition.filters)
        candidates = allowed if allowed is not None else self.catalog.all_patient_ids()
        scores: dict[int, float] = {}
        if definition.seeds:
            definition, scores = self._seed_similarities(definition, candidates)
            candidates = {pid for pid, s in scores.items() if s >= definition.min_similarity}
        if definition.probe:
            probabilities = repo.probe_probabilities(self.catalog, definition.probe)
            candidates = {pid for pid in candidates if probabilities.get(pid, -1.0) >= definition.min_probability}
            if not definition.seeds:
                scores = probabilities
        members = [(pid, scores.get(pid)) for pid in candidates]
        members.sort(key=lambda m: (m[1] is None, -(m[1] or 0.0), m[0]))
        return definition, members

    def _seed_similarities(self, definition: CohortDefinition, candidates: set[int]):
        """Best cosine of each candidate (with a vector) to any seed; records the signature used."""
        ids = self.catalog.patient_ids(list(definition.seeds))
        unknown = [s for s in definition.seeds if s not in ids]
        if unknown:
            raise NotFoundError(f"unknown seed patient(s): {', '.join(unknown)}")
        seed_ids = [ids[s] for s in definition.seeds]
        signature = definition.signature or self._signature_with(definition.kind, seed_ids)
        got, seed_raw = self.catalog.load_vectors(definition.kind, signature, seed_ids)
        if len(got) != len(seed_ids):
            missing = sorted(set(definition.seeds) - set(self.catalog.external_ids(got).values()))
            raise NotFoundError(f"seed patient(s) without a {definition.kind!r} vector of this signature: {', '.join(missing)}")
        seeds = l2_normalized(seed_raw)
        pool = np.intersect1d(self.catalog.vector_ids(definition.kind, signature), np.fromiter(candidates, np.int64, len(candidates)))
        scores: dict[int, float] = {}
        for start in range(0, len(pool), LOAD_CHUNK):
            chunk_ids, raw = self.catalog.load_vectors(definition.kind, signature, pool[start:start + LOAD_CHUNK])
            best = (l2_normalized(raw) @ seeds.T).max(axis=1)
            scores.update({int(i): float(s) for i, s in zip(chunk_ids, best)})
        resolved = CohortDefinition(definition.labels, definition.cohorts, definition.seeds, definition.min_similarity,
                                    definition.probe, definition.min_probability, definition.kind, signature)
        return resolved, scores

    def _signature_with(self, kind: str, patient_ids: list[int]) -> str:
        """The vector set of `kind` holding all these patients (membership by id; see `Catalog.resolve_vector_set`)."""
        return self.catalog.resolve_vector_set(kind, None, patients=tuple(patient_ids),
                                               describe=f"the {len(patient_ids)} seed patient(s)").signature

    def _member_vectors(self, name: str, kind: str | None, signature: str | None):
        """(member rows, kind, signature, ids with a vector, raw vectors) of a cohort (kind None: the cohort's own)."""
        members = repo.cohort_members(self.catalog, name)
        saved = repo.get_cohort(self.catalog, name).definition
        kind = kind or saved.get("kind") or self.catalog.default_kind()  # the cohort's own kind unless asked otherwise
        if signature is None:
            signature = saved.get("signature") if saved.get("kind", "eagle") == kind else None
            signature = signature or self._signature_with(kind, [])
        ids, raw = self.catalog.load_vectors(kind, signature, [pid for pid, _, _ in members]) if members else (np.zeros(0, np.int64), np.zeros((0, 0), np.float32))
        return members, kind, signature, ids, raw

    # -- exports ---------------------------------------------------------------------------
    def export(self, name: str, fmt: str, out: Path, kind: str | None = None, signature: str | None = None) -> dict:
        """Write the cohort as a STAMP slide table, clinical table, EAGLE-layout .h5 or Parquet (atomically)."""
        if fmt not in EXPORT_FORMATS:
            raise InputError(f"unknown export format {fmt!r} (one of {', '.join(EXPORT_FORMATS)})")
        out = Path(out)
        members = repo.cohort_members(self.catalog, name)
        report = {"cohort": name, "format": fmt, "path": str(out), "members": len(members), "rows": 0, "notes": []}
        if fmt == "stamp":
            slides = repo.slide_files(self.catalog, [pid for pid, _, _ in members])
            rows = [(ext, Path(path).name if path else slide) for pid, ext, _ in members for slide, path in slides[pid]]
            without = [ext for pid, ext, _ in members if not slides[pid]]
            if without:
                report["notes"].append(f"{len(without)} member(s) have no slides and are not listed: {', '.join(without[:10])}")
            _write_csv(out, ["PATIENT", "FILENAME"], rows)
            report["rows"] = len(rows)
        elif fmt == "clinical":
            labels = self.catalog.labels_of([pid for pid, _, _ in members])
            columns = sorted({n for values in labels.values() for n in values})
            rows = [[ext] + [labels[pid].get(c) or "" for c in columns] for pid, ext, _ in members]
            _write_csv(out, ["PATIENT"] + columns, rows)
            report["rows"] = len(rows)
        else:
            _, kind, signature, ids, raw = self._member_vectors(name, kind, signature)
            names = self.catalog.external_ids(ids)
            with_vector = set(ids.tolist())
            without = [ext for pid, ext, _ in members if pid not in with_vector]
            if without:
                report["notes"].append(f"{len(without)} member(s) have no {kind!r} vector: {', '.join(without[:10])}")
            report.update(kind=kind, signature=signature)
            if fmt == "eagle-h5":
                from eagle_index.formats.embeddings import write_eagle_file

                write_eagle_file(out, [names[int(i)] for i in ids], raw, extractor="virchow2-class" if kind == "eagle" else kind,
                                 attrs={"kind": kind, "signature": signature, "cohort": name, "normalized": False})
                report["rows"] = len(ids)
            else:
                self._write_parquet(out, name, members, dict(zip(ids.tolist(), raw)), kind, signature)
                report["rows"] = len(members)
        return report

    def _write_parquet(self, out: Path, name: str, members, vectors: dict[int, np.ndarray], kind: str, signature: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pids = [pid for pid, _, _ in members]
        labels = self.catalog.labels_of(pids)
        slides = self.catalog.slides_of(pids)
        label_names = sorted({n for values in labels.values() for n in values})
        reserved = {"patient", "score", "slides", "vector"}
        dim = len(next(iter(vectors.values()))) if vectors else 0
        columns = {
            "patient": pa.array([ext for _, ext, _ in members], pa.string()),
            "score": pa.array([score for _, _, score in members], pa.float64()),
            "slides": pa.array([slides[pid] for pid in pids], pa.list_(pa.string())),
        }
        for label in label_names:
            columns[f"label:{label}" if label in reserved else label] = pa.array([labels[pid].get(label) for pid in pids], pa.string())
        columns["vector"] = pa.array([vectors[pid].astype(np.float32).tolist() if pid in vectors else None for pid in pids],
                                     pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32()))
        table = pa.table(columns).replace_schema_metadata({
            "eagle_index": json.dumps({"cohort": name, "kind": kind, "signature": signature, "normalized": False}),
        })
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)

    # -- quality checks ---------------------------------------------------------------------------
    def duplicates(self, threshold: float = 0.95, kind: str | None = None, signature: str | None = None,
                   cohort: str | None = None, max_pairs: int = 10_000) -> dict:
        """Near-duplicate patients (cosine >= threshold) in the whole catalog or one cohort, with
        the labels on which each pair disagrees (a rescanned slide filed with other labels)."""
        _check_threshold(threshold)
        with self.catalog.reading():  # the ids, the index searches and the naming see one catalog generation
            return self._duplicates_read(threshold, kind, signature, cohort, max_pairs)

    def _duplicates_read(self, threshold, kind, signature, cohort, max_pairs) -> dict:
        if cohort:
            _, kind, signature, ids, raw = self._member_vectors(cohort, kind, signature)
        else:
            kind = kind or self.catalog.default_kind()
            signature = signature or self._signature_with(kind, [])
            ids = self.catalog.vector_ids(kind, signature)
        if not cohort and len(ids) > DUPLICATE_EXACT_LIMIT:
            pairs = self._pairs_via_index(kind, signature, ids, threshold)
        else:
            if not cohort:
                ids, raw = self.catalog.load_vectors(kind, signature)
            matrix = l2_normalized(raw) if len(ids) else raw
            pairs = pairs_above(matrix, ids, matrix, ids, threshold)
        pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
        total = len(pairs)
        pairs = pairs[:max_pairs]
        involved = sorted({i for p in pairs for i in p[:2]})
        names = self.catalog.external_ids(involved)
        labels = self.catalog.labels_of(involved)
        return {
            "kind": kind, "signature": signature, "threshold": threshold, "cohort": cohort, "patients": len(ids),
            "pair_count": total, "truncated": total > len(pairs),
            "pairs": [{"a": names[a], "b": names[b], "score": round(s, 6), "label_conflicts": _conflicts(labels[a], labels[b])}
                      for a, b, s in pairs],
            "groups": [[names[i] for i in g] for g in duplicate_groups(pairs)],
        }

    def leakage(self, a: str, b: str, threshold: float = 0.95, kind: str | None = None, signature: str | None = None) -> dict:
        """Train/test leakage between two cohorts: patients in both, and near-duplicate pairs
        (a member of A, another patient that is a member of B, cosine >= threshold)."""
        _check_threshold(threshold)
        with self.catalog.reading():  # both cohorts' vectors and the naming see one catalog generation
            return self._leakage_read(a, b, threshold, kind, signature)

    def _leakage_read(self, a, b, threshold, kind, signature) -> dict:
        members_a, kind, signature, ids_a, raw_a = self._member_vectors(a, kind, signature)
        members_b, _, _, ids_b, raw_b = self._member_vectors(b, kind, signature)
        shared = sorted({ext for _, ext, _ in members_a} & {ext for _, ext, _ in members_b})
        pairs = []
        if len(ids_a) and len(ids_b):
            pairs = pairs_above(l2_normalized(raw_a), ids_a, l2_normalized(raw_b), ids_b, threshold)
        unique: dict[tuple[int, int], tuple[int, int, float]] = {}
        for x, y, s in pairs:  # a patient in both cohorts can pair with another in both, twice
            unique.setdefault((min(x, y), max(x, y)), (x, y, s))
        pairs = sorted(unique.values(), key=lambda p: (-p[2], p[0], p[1]))
        names = self.catalog.external_ids({i for p in pairs for i in p[:2]})
        without = len(members_a) - len(ids_a) + len(members_b) - len(ids_b)
        return {
            "a": a, "b": b, "kind": kind, "signature": signature, "threshold": threshold,
            "members": {a: len(members_a), b: len(members_b)},
            "shared_patients": shared,
            "near_duplicates": [{"a": names[x], "b": names[y], "score": round(s, 6)} for x, y, s in pairs],
            "without_vector": without,
            "leak": bool(shared or pairs),
        }

    def _pairs_via_index(self, kind: str, signature: str, ids: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
        """Pairs above threshold through the vector index: neighbours of each patient, asking for
        more (x4) for patients whose last returned neighbour is still above the threshold."""
        found: dict[tuple[int, int], float] = {}
        total = len(ids)
        for start in range(0, total, LOAD_CHUNK):
            chunk_ids, raw = self.catalog.load_vectors(kind, signature, ids[start:start + LOAD_CHUNK])
            pending, k = np.arange(len(chunk_ids)), 16
            while len(pending):
                hit_ids, hit_scores = self.vectors.search(kind, signature, raw[pending], min(k, total))
                again = []
                for row, h_ids, h_scores in zip(pending, hit_ids, hit_scores):
                    if len(h_scores) and h_scores[-1] >= threshold and k < total:
                        again.append(row)
                        continue
                    q = int(chunk_ids[row])
                    for h, s in zip(h_ids.tolist(), h_scores.tolist()):
                        if s >= threshold and h != q:
                            found[(min(q, h), max(q, h))] = s
                pending, k = np.asarray(again, dtype=np.int64), k * 4
        return [(a, b, s) for (a, b), s in found.items()]

    # -- 2-D map -----------------------------------------------------------------------------
    def umap(self, name: str, kind: str | None = None, signature: str | None = None, seed: int = 0,
             n_neighbors: int = UMAP_PARAMS["n_neighbors"], min_dist: float = UMAP_PARAMS["min_dist"]) -> dict:
        """2-D UMAP (cosine, n_neighbors 15, min_dist 0.1) of the members' vectors, cached under
        DATA/cache/umap/; PCA, with a note, when umap-learn is not installed."""
        members, kind, signature, ids, raw = self._member_vectors(name, kind, signature)
        if len(ids) < 4:
            raise InputError(f"cohort {name!r} has {len(ids)} member(s) with a {kind!r} vector; a map needs at least 4")
        method = "umap" if _umap_available() else "pca"
        params = {"n_neighbors": int(n_neighbors), "min_dist": float(min_dist), "metric": "cosine", "seed": int(seed)}
        digest = hashlib.sha256()
        digest.update(np.asarray(ids, np.int64).tobytes())
        digest.update(np.ascontiguousarray(raw, np.float32).tobytes())
        digest.update(json.dumps({"method": method, "signature": signature, **params}, sort_keys=True).encode())
        path = self.settings.data_dir / "cache" / "umap" / f"{_safe(name)}-{_safe(kind)}-{digest.hexdigest()[:16]}.npz"
        cached = path.is_file()
        if cached:
            with np.load(path, allow_pickle=False) as saved:
                coords = saved["coords"]
        else:
            coords = project_2d(l2_normalized(raw), method, params)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, ids=np.asarray(ids, np.int64), coords=coords.astype(np.float32))
        names = self.catalog.external_ids(ids)
        labels = self.catalog.labels_of(ids)
        scores = {pid: score for pid, _, score in members}
        note = None if method == "umap" else "umap-learn is not installed: showing a PCA projection instead (pip install umap-learn)"
        return {
            "cohort": name, "kind": kind, "signature": signature, "method": method, "params": params, "cached": cached,
            "path": str(path), "note": note,
            "points": [{"patient": names[int(i)], "x": float(x), "y": float(y), "score": scores.get(int(i)), "labels": labels[int(i)]}
                       for i, (x, y) in zip(ids, coords)],
        }


def _umap_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def project_2d(matrix: np.ndarray, method: str, params: dict) -> np.ndarray:
    """2-D coordinates of normalized rows: UMAP (cosine) or PCA."""
    if method == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" and numba notices
            reducer = umap.UMAP(n_neighbors=min(params["n_neighbors"], len(matrix) - 1), min_dist=params["min_dist"],
                                metric=params["metric"], random_state=params["seed"])
            return np.asarray(reducer.fit_transform(matrix), dtype=np.float32)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=params["seed"]).fit_transform(matrix).astype(np.float32)


def _check_threshold(threshold: float) -> None:
    if not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold {threshold} is not a cosine in [-1, 1]")


def _conflicts(a: dict, b: dict) -> dict[str, list]:
    return {n: [a.get(n), b.get(n)] for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n) and a.get(n) is not None and b.get(n) is not None}


def _write_csv(path: Path, header: list[str], rows) -> None:
    from eagle_index.formats.tables import csv_row  # formula-like cells neutralised (read back by read_table)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_row(header))
    writer.writerows(csv_row(row) for row in rows)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buffer.getvalue(), encoding="utf-8")
