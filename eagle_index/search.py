"""Look-alike search: top-k by cosine with filters, explanations, kNN label vote, retrieval metrics.

Filtered top-k. Every filter becomes a set of patient ids: `allowed` (label values, cohort
membership; None = no restriction) and `excluded` (the query patient, patients named to skip,
patients of the query's site or sharing a label value). The search then returns exactly the
top-k of (vector set ∩ allowed − excluded) by cosine, so a filtered query still returns k hits
whenever k exist:
- an allowed set of at most `exact_limit` patients is scored exactly: its vectors are read
  from the catalog (in chunks) and multiplied with the query (one BLAS call per chunk);
- otherwise the FAISS index is asked for more neighbours than k (k · N / |accepted|, growing
  4x per round) until k accepted ones are found, the score floor is passed or the whole
  index was returned; an approximate index that runs dry falls back to the exact path.
Hits are ordered by (score descending, patient id) on both paths.

Explanations. A patient's EAGLE vector is the mean Virchow2 class token of its top-25 tiles
(`eagle_index.aggregation`). For a hit, both patients' top-25 tiles are read back from their
slide artifacts and their class tokens compared by cosine; the explanation is the best pairs
chosen greedily one-to-one (best pair first, then the best pair among unused tiles, ...), so
it shows n different query tiles and n different hit tiles. Imported vectors have no
artifacts: no explanation.

kNN vote and retrieval metrics follow the histopathology retrieval literature (Yottixel,
RetCCL, SISH, EAGLE): see `knn_vote` and `retrieval_metrics` for the exact definitions.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from eagle_index.errors import EagleIndexError, InputError, NotFoundError
from eagle_index.results import Hit, RetrievalEvaluation, SearchResult, TilePair
from eagle_index.store.validation import as_vector_matrix, l2_normalized

log = logging.getLogger(__name__)

TCGA_SITE = re.compile(r"^TCGA-([A-Z0-9]{2})-", re.IGNORECASE)
LOAD_CHUNK = 20_000  # vectors read from the catalog at a time on the exact path


# -- filters ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchFilters:
    """Which patients a search (or a cohort) may return.

    labels: {label name: accepted values}; AND over names, OR over the values of one name;
    the value "*" accepts any value ("has the label"). cohorts: member of every named cohort.
    min_score: cosine floor. exclude_patients: external ids never returned.
    exclude_same_site: drop hits from the query's site (the `site_label` label, matched
    case-insensitively, else the TCGA tissue-source-site code of the patient id).
    exclude_same: label names whose value a hit must not share with the query.
    in_annotation: annotation class names; only patients with a selected tile whose centre lies
    inside an area annotation of one of these classes (any case) on its slide (issue 23).
    """

    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cohorts: tuple[str, ...] = ()
    min_score: float | None = None
    exclude_patients: tuple[str, ...] = ()
    exclude_same_site: bool = False
    site_label: str = "site"
    exclude_same: tuple[str, ...] = ()
    in_annotation: tuple[str, ...] = ()

    @classmethod
    def build(cls, labels=(), cohorts=(), min_score=None, exclude_patients=(), exclude_same_site=False,
              site_label="site", exclude_same=(), in_annotation=()) -> "SearchFilters":
        """From front-end values: labels as "NAME=VALUE" strings or a {name: value(s)} mapping."""
        if isinstance(in_annotation, str):
            in_annotation = (in_annotation,)
        return cls(parse_label_filters(labels), tuple(cohorts or ()), min_score, tuple(exclude_patients or ()),
                   bool(exclude_same_site), site_label or "site", tuple(exclude_same or ()),
                   tuple(c for c in (str(v).strip() for v in in_annotation or ()) if c))

    @classmethod
    def from_dict(cls, data: dict | None) -> "SearchFilters":
        data = dict(data or {})
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InputError(f"unknown filter field(s): {', '.join(sorted(unknown))}")
        return cls.build(**data)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["labels"] = {k: list(v) for k, v in self.labels.items()}
        for key in ("cohorts", "exclude_patients", "exclude_same", "in_annotation"):
            out[key] = list(out[key])
        if not out["in_annotation"]:  # absent unless used: stored cohort definitions and answers keep their shape
            del out["in_annotation"]
        return out

    @property
    def restricts(self) -> bool:
        """True when the filters name an allowed set (labels, cohorts or annotation classes), not only exclusions."""
        return bool(self.labels or self.cohorts or self.in_annotation)


def parse_label_filters(labels) -> dict[str, tuple[str, ...]]:
    if isinstance(labels, dict):
        items = [(str(k), v) for k, v in labels.items()]
    else:
        items = []
        for text in labels or ():
            name, sep, value = str(text).partition("=")
            if not sep or not name.strip() or not value.strip():
                raise InputError(f"label filter {text!r}: expected NAME=VALUE (VALUE * = has the label)")
            items.append((name.strip(), value.strip()))
    out: dict[str, list[str]] = {}
    for name, value in items:
        values = [value] if isinstance(value, str) else list(value)
        out.setdefault(name, []).extend(str(v) for v in values)
    return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def allowed_ids(catalog, filters: SearchFilters, tile_um: float | None = None) -> set[int] | None:
    """Patients the label, cohort and annotation filters allow (None: no such filter).
    tile_um: the tile side (settings.tiling.tile_um; default the pipeline's 448 µm) for `in_annotation`."""
    allowed: set[int] | None = None
    if filters.labels:
        allowed = catalog.patients_with_labels({k: list(v) for k, v in filters.labels.items()})
    if filters.cohorts:
        members = catalog.cohort_member_ids(list(filters.cohorts))
        allowed = members if allowed is None else allowed & members
    if filters.in_annotation:
        from eagle_index.config import TilingSettings
        from eagle_index.store.annotations_repo import patients_in_annotations

        inside = patients_in_annotations(catalog, filters.in_annotation, tile_um or TilingSettings().tile_um)
        allowed = inside if allowed is None else allowed & inside
    return allowed


def site_of(external_id: str, labels: dict[str, str | None], site_label: str = "site") -> str | None:
    """A patient's site: its `site_label` label (any case), else the TCGA tissue source site of its id."""
    wanted = site_label.lower()
    for name, value in labels.items():
        if name.lower() == wanted and value:
            return str(value)
    match = TCGA_SITE.match(external_id or "")
    return f"TCGA-{match.group(1).upper()}" if match else None


def site_map(catalog, site_label: str = "site") -> dict[int, str]:
    """{patient id: site} for every patient with a known site (see `site_of`)."""
    names = {n for n in catalog.label_names() if n.lower() == site_label.lower()}
    by_label: dict[int, str] = {}
    for name in sorted(names):
        for pid, value in catalog.label_values(name).items():
            by_label.setdefault(pid, value)
    out: dict[int, str] = {}
    for pid, ext in catalog.external_id_map().items():
        site = by_label.get(pid) or site_of(ext, {}, site_label)
        if site:
            out[pid] = site
    return out


# -- pure top-k ---------------------------------------------------------------------------------
def exact_top_k(query: np.ndarray, ids: np.ndarray, matrix: np.ndarray, k: int,
                min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, scores) of one normalized query over normalized rows, by (score desc, id asc)."""
    if k <= 0 or len(ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = (matrix @ query.reshape(-1)).astype(np.float32)
    if min_score is not None:
        keep = scores >= min_score
        ids, scores = ids[keep], scores[keep]
    if len(ids) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        # include every row tied with the k-th score, so the id tie-break is exact
        part = np.flatnonzero(scores >= scores[part].min())
        ids, scores = ids[part], scores[part]
    order = np.lexsort((ids, -scores.astype(np.float64)))[:k]
    return ids[order].astype(np.int64), scores[order]


def merge_top_k(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int):
    ids = np.concatenate([a[0], b[0]])
    scores = np.concatenate([a[1], b[1]]).astype(np.float32)
    order = np.lexsort((ids, -scores.astype(np.float64)))[:k]
    return ids[order], scores[order]


# -- explanations -------------------------------------------------------------------------------
@dataclass
class TileSelection:
    """A patient's top-k tiles (the ones its EAGLE vector averages) as columns, with normalized class
    tokens for matching tiles; services hand single tiles out as `tiles.Tile`."""

    slide: list[str]
    x_um: np.ndarray
    y_um: np.ndarray
    attention: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.slide)


def read_tile_selection(artifact_paths: list[str | Path], top_k: int) -> TileSelection | None:
    """The patient's selection (same tie rule as its vector) from its slide artifacts; None without any."""
    from eagle_index import aggregation
    from eagle_index.store.artifacts import read_slide_candidates

    if not artifact_paths:
        return None
    candidates = [read_slide_candidates(Path(p)) for p in artifact_paths]
    candidates = [c for c in candidates if c.class_tokens is not None and len(c)]
    if not candidates:
        return None
    selection = aggregation.select_patient_tiles(candidates, top_k)
    rows = list(zip(selection.slide, selection.row))
    tokens = np.stack([candidates[s].class_tokens[r] for s, r in rows]).astype(np.float32)
    return TileSelection(
        slide=[candidates[s].slide_name for s, _ in rows],
        x_um=np.array([candidates[s].x_um[r] for s, r in rows], dtype=np.float64),
        y_um=np.array([candidates[s].y_um[r] for s, r in rows], dtype=np.float64),
        attention=np.array([candidates[s].scores[r] for s, r in rows], dtype=np.float32),
        tokens=l2_normalized(tokens),
    )


def match_tiles(query: TileSelection, hit: TileSelection, pairs: int = 5) -> list[TilePair]:
    """The most similar (query tile, hit tile) pairs by class-token cosine, chosen greedily one-to-one."""
    sims = query.tokens @ hit.tokens.T
    order = np.argsort(-sims, axis=None, kind="stable")

    def attention_ranks(tiles: TileSelection) -> np.ndarray:
        ranks = np.empty(len(tiles), dtype=np.int64)
        ranks[np.argsort(-np.asarray(tiles.attention, dtype=np.float64), kind="stable")] = np.arange(1, len(tiles) + 1)
        return ranks

    q_rank, h_rank = attention_ranks(query), attention_ranks(hit)
    used_q, used_h, out = set(), set(), []
    for flat in order:
        qi, hi = divmod(int(flat), sims.shape[1])
        if qi in used_q or hi in used_h:
            continue
        used_q.add(qi)
        used_h.add(hi)
        out.append(TilePair(
            similarity=float(sims[qi, hi]),
            query_slide=query.slide[qi], query_x_um=float(query.x_um[qi]), query_y_um=float(query.y_um[qi]),
            hit_slide=hit.slide[hi], hit_x_um=float(hit.x_um[hi]), hit_y_um=float(hit.y_um[hi]),
            query_tile_rank=int(q_rank[qi]), hit_tile_rank=int(h_rank[hi]), query_tiles=len(query), hit_tiles=len(hit),
        ))
        if len(out) >= pairs:
            break
    return out


# -- kNN vote and retrieval metrics -------------------------------------------------------------------
def _winner(counts: dict[str, int], weights: dict[str, float], first: dict[str, int], by_weight: bool) -> str:
    if by_weight:
        return min(counts, key=lambda v: (-weights[v], -counts[v], first[v]))
    return min(counts, key=lambda v: (-counts[v], -weights[v], first[v]))


def knn_vote(labels: list[str | None], scores: list[float]) -> dict:
    """Predicted label from ranked neighbours (best first); neighbours without the label are ignored.

    majority: most frequent value; ties go to the larger summed score, then to the value of the
    nearer neighbour. weighted: largest summed cosine score; ties by count, then the nearer one.
    """
    counts: dict[str, int] = {}
    weights: dict[str, float] = {}
    first: dict[str, int] = {}
    for rank, (value, score) in enumerate(zip(labels, scores)):
        if value is None:
            continue
        counts[value] = counts.get(value, 0) + 1
        weights[value] = weights.get(value, 0.0) + float(score)
        first.setdefault(value, rank)
    if not counts:
        return {"majority": None, "weighted": None, "counts": {}, "weights": {}, "neighbours": 0,
                "unlabelled": len(labels)}
    return {
        "majority": _winner(counts, weights, first, by_weight=False),
        "weighted": _winner(counts, weights, first, by_weight=True),
        "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "weights": {v: round(weights[v], 6) for v in sorted(weights, key=lambda v: (-weights[v], v))},
        "neighbours": sum(counts.values()),
        "unlabelled": len(labels) - sum(counts.values()),
    }


def retrieval_metrics(query_labels: np.ndarray, neighbour_labels: np.ndarray, neighbour_scores: np.ndarray,
                      ks: list[int], class_names: list[str] | None = None) -> dict:
    """Acc@k, MV@k and mAP@k of ranked neighbours, overall (mean over queries), per class and macro.

    query_labels: int (n,); neighbour_labels: int (n, kmax), best first, -1 where a query had
    fewer neighbours; neighbour_scores: (n, kmax) cosine (used only to break MV ties).
    - Acc@k: at least one of the top-k neighbours has the query's label (top-k accuracy).
    - MV@k: the majority vote of the top-k labels (ties as `knn_vote`'s majority) is the query's label.
    - mAP@k: mean over queries of AP@k = (1/R) * sum_{i<=k, rel_i} P@i, where R is the number of
      relevant (same-label) neighbours in the top k (AP@k = 0 when R = 0).
    """
    query_labels = np.asarray(query_labels)
    n = len(query_labels)
    per_query: dict[str, np.ndarray] = {}
    for k in ks:
        top = neighbour_labels[:, :k]
        rel = top == query_labels[:, None]
        per_query[f"Acc@{k}"] = rel.any(axis=1).astype(np.float64)
        hits_so_far = np.cumsum(rel, axis=1)
        precision = hits_so_far / np.arange(1, top.shape[1] + 1)[None, :]
        r = rel.sum(axis=1)
        per_query[f"mAP@{k}"] = np.where(r > 0, (precision * rel).sum(axis=1) / np.maximum(r, 1), 0.0)
        mv = np.zeros(n)
        for i in range(n):
            row = [int(v) if v >= 0 else None for v in top[i]]
            vote = knn_vote([None if v is None else str(v) for v in row], neighbour_scores[i, :k].tolist())
            mv[i] = vote["majority"] is not None and int(vote["majority"]) == int(query_labels[i])
        per_query[f"MV@{k}"] = mv
    names = [f"{m}@{k}" for k in ks for m in ("Acc", "MV", "mAP")]
    overall = {m: float(per_query[m].mean()) if n else None for m in names}
    classes = {}
    for c in sorted(set(query_labels.tolist())):
        rows = query_labels == c
        key = class_names[c] if class_names is not None else str(c)
        classes[key] = {"n": int(rows.sum()), **{m: float(per_query[m][rows].mean()) for m in names}}
    macro = {m: float(np.mean([v[m] for v in classes.values()])) if classes else None for m in names}
    return {"overall": overall, "macro": macro, "classes": classes}


def leave_one_out_neighbours(matrix: np.ndarray, kmax: int, groups: np.ndarray | None = None,
                             block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each normalized row, its kmax nearest other rows (index, cosine), exact, by (score desc, index).

    groups: optional int (n,) — rows of the same group (e.g. site) are not neighbours (-1 = none).
    Missing neighbours are index -1, score -inf.
    """
    n = len(matrix)
    kmax = min(kmax, max(n - 1, 0))
    out_idx = np.full((n, kmax), -1, dtype=np.int64)
    out_scores = np.full((n, kmax), -np.inf, dtype=np.float32)
    if kmax == 0:
        return out_idx, out_scores
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = (matrix[start:stop] @ matrix.T).astype(np.float32)
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        if groups is not None:
            g = groups[start:stop]
            same = (g[:, None] == groups[None, :]) & (g[:, None] >= 0)
            sims[same] = -np.inf
        part = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores.astype(np.float64)), axis=1)
        idx = np.take_along_axis(part, order, axis=1)
        sc = np.take_along_axis(part_scores, order, axis=1)
        idx[~np.isfinite(sc)] = -1
        out_idx[start:stop], out_scores[start:stop] = idx, sc
    return out_idx, out_scores


def read_query_vector(path: Path) -> np.ndarray:
    """A query vector from a .npy file (D,) or an embedding .h5 file holding exactly one vector."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read a vector ({exc})") from None
        if data.ndim == 2 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 1:
            raise InputError(f"{path}: expected one vector (D,), found shape {data.shape}")
        return data.astype(np.float32)
    from eagle_index.formats.embeddings import read_embedding_file

    emb = read_embedding_file(path)
    if len(emb.vectors) != 1:
        raise InputError(f"{path}: holds {len(emb.vectors)} vectors; a query needs exactly one")
    return emb.vectors[0]


# -- the service ----------------------------------------------------------------------------------
def _count_in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> int:
    """How many of `values` (distinct) are in `sorted_ids`: a binary search each, not a sort of the set."""
    if not len(values) or not len(sorted_ids):
        return 0
    where = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return int((sorted_ids[where] == values).sum())


class SearchService:
    """Search over the catalog's vector sets; front ends call it through `EagleService.searcher`."""

    exact_limit = 20_000  # allowed sets up to this many patients are searched exactly
    tiles_cache_size = 256  # patients whose top tiles (for explanations) stay in memory

    def __init__(self, settings, catalog, vectors, query_models, embed, ingest):
        """Collaborators, not the facade: the vector indexes, `query_models(signatures)` (the models that
        encode a query), `embed(...)` (slides to vectors, no catalog) and `ingest(...)` (store=True slide queries)."""
        self.settings, self.catalog, self.vectors = settings, catalog, vectors
        self._query_models, self._embed, self._ingest = query_models, embed, ingest
        self._tiles_cache: OrderedDict[tuple[str, ...], TileSelection | None] = OrderedDict()
        self._tiles_lock = threading.Lock()

    # -- entry points ------------------------------------------------------------------------------
    def search_patient(self, external_id: str, k: int = 10, kind: str | None = None, signature: str | None = None,
                       filters: SearchFilters | None = None, explain: bool = False, vote: str | None = None,
                       pairs: int = 5) -> SearchResult:
        """The k most similar other patients to a stored patient (it never returns itself)."""
        ids = self.catalog.patient_ids([external_id])
        if external_id not in ids:
            raise NotFoundError(f"unknown patient {external_id!r}")
        patient_id = ids[external_id]
        info = self.catalog.resolve_vector_set(kind, signature, patients=(patient_id,), describe=f"patient {external_id!r}")
        kind, signature = info.kind, info.signature
        query = self._stored_query(kind, signature, patient_id)
        if query is None:
            raise NotFoundError(f"patient {external_id!r} has no {kind!r} vector with signature {signature!r}")
        query_tiles = self._stored_tiles(patient_id) if explain else None
        result = self._run(query, k, kind, signature, filters, patient_id, external_id,
                           {"patient": external_id, "kind": kind, "signature": signature})
        return self._finish(result, query_tiles, explain, vote, pairs, patient_id)

    def _stored_query(self, kind: str, signature: str, patient_id: int) -> np.ndarray | None:
        """A stored patient's vector as a query: the unit vector its index holds (flat, HNSW and
        IVF with exact re-ranking keep it; no SQL), else the catalog's raw vector (cached)."""
        try:
            with self.catalog.reading():  # never read an index while the writer changes it
                return self.vectors.get(kind, signature).index.reconstruct(int(patient_id))
        except (RuntimeError, KeyError, AttributeError):  # index kinds without stored vectors, or id absent
            return self.catalog.stored_vector(kind, signature, patient_id)

    def search_vector(self, vector, k: int = 10, kind: str | None = None, signature: str | None = None,
                      filters: SearchFilters | None = None, vote: str | None = None) -> SearchResult:
        """The k most similar patients to a given vector (raw or normalized; cosine)."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        info = self.catalog.resolve_vector_set(kind, signature, dim=None if signature else len(vector))
        kind, signature = info.kind, info.signature
        result = self._run(vector, k, kind, signature, filters, None, None, {"vector": True, "kind": kind, "signature": signature})
        return self._finish(result, None, False, vote, 0)

    def search_slides(self, paths: list[Path], k: int = 10, kind: str | None = None, patient: str | None = None,
                      filters: SearchFilters | None = None, explain: bool = False, vote: str | None = None,
                      pairs: int = 5, store: bool = False, mpp: float | None = None) -> SearchResult:
        """Embed slide files on the fly (stored only with store=True) and search with them as one patient.

        If the query patient (--patient, else the name rule) is in the catalog, it is not returned.
        """
        kind = kind or self.catalog.default_kind()
        if store:
            report = self._ingest(list(paths), patient=patient, mpp=mpp)
            if report.failed:
                raise InputError(f"slide(s) failed: {'; '.join(f.file + ': ' + f.error for f in report.failed)}")
            names = [patient] if patient else list(report.patients)
            if not names:  # every slide was in the catalog already (maybe under another name)
                names = self._owners_of(paths)
            if len(names) != 1:
                raise InputError(f"these slides belong to {len(names)} patients ({', '.join(names)}); pass --patient")
            return self.search_patient(names[0], k, kind, None, filters, explain, vote, pairs)
        models = self._query_models(s.signature for s in self.catalog.vector_sets() if s.kind == kind)
        with tempfile.TemporaryDirectory(prefix="eagle-query-") as tmp:
            embedded = self._embed(list(paths), patient=patient, artifacts_dir=Path(tmp) if explain else None, mpp=mpp,
                                          models=models)
            if len(embedded) != 1:
                raise InputError(f"these slides belong to {len(embedded)} patients ({', '.join(sorted(embedded))}); pass --patient")
            name, vectors = next(iter(embedded.items()))
            query_tiles = read_tile_selection(sorted(Path(tmp).glob("*.h5")), self.settings.eagle.top_k) if explain else None
        by_kind = vectors.by_kind()
        if kind not in by_kind:
            raise InputError(f"slides give vectors of kind {', '.join(by_kind)}, not {kind!r}")
        signature = models.signature(kind)
        self.catalog.vector_set(kind, signature)  # NotFoundError: nothing stored with these models
        existing = self.catalog.patient_ids([name]).get(name)
        query = {"slides": [str(p) for p in paths], "patient": name, "kind": kind, "signature": signature,
                 "stored": False, "selection": vectors.selection}
        result = self._run(by_kind[kind], k, kind, signature, filters, existing, name, query)
        return self._finish(result, query_tiles, explain, vote, pairs)

    def _owners_of(self, paths) -> list[str]:
        """External ids of the patients that hold these slide files (by content fingerprint)."""
        from eagle_index.fingerprint import slide_fingerprint

        owners = self.catalog.patients_holding([slide_fingerprint(p) for p in map(Path, paths) if p.is_file()])
        return sorted(self.catalog.external_ids(owners).values())

    # -- core -----------------------------------------------------------------------------------
    def excluded_ids(self, filters: SearchFilters, query_id: int | None, query_name: str | None) -> set[int]:
        """Ids a query must not return: named patients, and patients sharing its site or label values."""
        excluded: set[int] = set()
        if filters.exclude_patients:
            excluded |= set(self.catalog.patient_ids(list(filters.exclude_patients)).values())
        if not (filters.exclude_same_site or filters.exclude_same):
            return excluded
        query_labels = self.catalog.labels_of([query_id])[query_id] if query_id is not None else {}
        if filters.exclude_same_site:
            site = site_of(query_name or "", query_labels, filters.site_label)
            if site is not None:
                excluded |= {pid for pid, s in site_map(self.catalog, filters.site_label).items() if s == site}
        for name in filters.exclude_same:
            value = query_labels.get(self.catalog.label_name(name))
            if value is not None:
                excluded |= self.catalog.patients_with_labels({name: [value]})
        return excluded

    def top_k(self, kind: str, signature: str, query: np.ndarray, k: int, filters: SearchFilters | None = None,
              query_id: int | None = None, query_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, cosine scores) of the exact filtered top-k (see the module docstring); never `query_id`."""
        filters = filters or SearchFilters()
        info = self.catalog.vector_set(kind, signature)
        query = l2_normalized(as_vector_matrix(np.asarray(query, np.float32).reshape(1, -1), info.dim, "query vector"))[0]
        excluded = self.excluded_ids(filters, query_id, query_name)
        if query_id is not None:
            excluded.add(int(query_id))
        excluded_arr = np.fromiter(excluded, np.int64, len(excluded))
        allowed = allowed_ids(self.catalog, filters, self.settings.tiling.tile_um)
        if allowed is not None:
            candidates = np.setdiff1d(np.intersect1d(self.catalog.vector_ids(kind, signature),
                                                     np.fromiter(allowed, np.int64, len(allowed))), excluded_arr)
            if len(candidates) <= self.exact_limit:
                return self._exact(kind, signature, query, k, candidates, filters.min_score)

            def accept(ids):
                return np.isin(ids, candidates)

            n_accept = len(candidates)
        else:
            def accept(ids):
                return ~np.isin(ids, excluded_arr)

            n_excluded = _count_in_sorted(excluded_arr, self.catalog.vector_ids(kind, signature))
            n_accept = info.count - n_excluded
        found = self._over_fetch(kind, signature, query, k, accept, n_accept, info.count, filters.min_score)
        if found is not None:
            return found
        log.info("approximate index ran dry before %d accepted hits: scoring the allowed set exactly", k)
        in_set = self.catalog.vector_ids(kind, signature)
        return self._exact(kind, signature, query, k, in_set[accept(in_set)], filters.min_score)

    def _exact(self, kind, signature, query, k, candidates: np.ndarray, min_score):
        best = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        for start in range(0, len(candidates), LOAD_CHUNK):
            ids, raw = self.catalog.load_vectors(kind, signature, candidates[start:start + LOAD_CHUNK])
            if len(ids):
                best = merge_top_k(best, exact_top_k(query, ids, l2_normalized(raw), k, min_score), k)
        return best

    def _over_fetch(self, kind, signature, query, k, accept, n_accept: int, total: int, min_score):
        """Top-k through the index, asking for more neighbours until k accepted; None if an
        approximate index returned fewer vectors than asked before that."""
        if n_accept == 0 or k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        # at most `total - n_accept` of any neighbours are refused, so k plus that many always holds k
        # accepted ones: a few refused ids (the query patient itself) cost a few more, not 2.4x k
        # (an IVF index re-ranks `ivf_refine_k_factor` x want candidates, most of a search's time)
        want = min(total, k + (total - n_accept), max(k, math.ceil(k * total / n_accept * 1.5)) + 8)
        while True:
            ids, scores = self.vectors.search(kind, signature, query[None, :], want)
            ids, scores = ids[0], scores[0]
            keep = accept(ids)
            if min_score is not None:
                keep &= scores >= min_score
            floor_passed = min_score is not None and len(scores) > 0 and bool(scores[-1] < min_score)
            exhausted = want >= total
            if len(ids) < want and not floor_passed and keep.sum() < min(k, n_accept):
                return None  # approximate index ran dry
            if keep.sum() >= k or floor_passed or exhausted:
                ids, scores = ids[keep], scores[keep]
                order = np.lexsort((ids, -scores.astype(np.float64)))[:k]
                return ids[order].astype(np.int64), scores[order].astype(np.float32)
            want = min(total, want * 4)

    def _run(self, query, k, kind, signature, filters, query_id: int | None, query_name, query_info) -> SearchResult:
        from eagle_index.limits import check_k

        check_k(k)
        filters = filters or SearchFilters()
        with self.catalog.reading():  # no commit between finding ids and naming their patients
            ids, scores = self.top_k(kind, signature, query, k, filters, query_id, query_name)
            hits = self.hits(ids, scores, kind, signature)
        return SearchResult(query=query_info, hits=tuple(hits), filters=filters.as_dict())

    def _finish(self, result: SearchResult, query_tiles, explain, vote, pairs, query_id: int | None = None) -> SearchResult:
        hits, notes, result_vote = result.hits, list(result.notes), None
        if explain:
            if query_tiles is None:
                notes.append("no explanation: the query has no slide artifacts (imported vectors)")
            else:
                ids = self.catalog.patient_ids([h.patient for h in hits])
                query_slides = self.catalog.done_slide_ids(query_id) if query_id is not None else {}
                explained = []
                for hit in hits:
                    tiles = self._stored_tiles(ids[hit.patient])
                    if tiles is not None:
                        hit_slides = self.catalog.done_slide_ids(ids[hit.patient])
                        pairs_found = tuple(replace(p, query_slide_id=query_slides.get(p.query_slide),
                                                    hit_slide_id=hit_slides.get(p.hit_slide))
                                            for p in match_tiles(query_tiles, tiles, pairs))
                        hit = replace(hit, explanation=pairs_found)
                    explained.append(hit)
                hits = tuple(explained)
        if vote:
            name = self.catalog.label_name(vote)
            result_vote = {"label": vote, **knn_vote([h.labels.get(name) for h in hits], [h.score for h in hits])}
        return replace(result, hits=hits, notes=tuple(notes), vote=result_vote)

    def _stored_tiles(self, patient_id: int) -> TileSelection | None:
        """A stored patient's top tiles from its artifacts (LRU-cached by artifact set), or None."""
        paths = tuple(self.catalog.artifact_paths(patient_id))
        if not paths:
            return None
        with self._tiles_lock:
            if paths in self._tiles_cache:
                self._tiles_cache.move_to_end(paths)
                return self._tiles_cache[paths]
        try:
            tiles = read_tile_selection(list(paths), self.settings.eagle.top_k)
        except EagleIndexError as exc:
            log.warning("no explanation for patient id %d: %s", patient_id, exc)
            tiles = None
        with self._tiles_lock:
            self._tiles_cache[paths] = tiles
            while len(self._tiles_cache) > self.tiles_cache_size:
                self._tiles_cache.popitem(last=False)
        return tiles

    def stored_tiles(self, patient_id: int) -> TileSelection | None:
        """A stored patient's selected tiles (None for imported vectors); cached like the explanations."""
        return self._stored_tiles(patient_id)

    def tile_pairs(self, query: str, hit: str, pairs: int = 5) -> tuple[TilePair, ...] | None:
        """The explanation's matching tile pairs between two stored patients (None: one has no slide artifacts)."""
        try:
            return self.match_patients(query, hit, pairs)
        except NotFoundError as exc:
            if "no slide artifacts" in str(exc):
                return None
            raise

    def hits(self, hit_ids, scores, kind: str, signature: str) -> list[Hit]:
        """Hit records: patient, score, rank, kind, signature, slides, labels."""
        names = self.catalog.external_ids(hit_ids)
        slides = self.catalog.slides_of(hit_ids)
        labels = self.catalog.labels_of(hit_ids)
        context = self.score_context.percentiles(kind, signature, scores) if len(hit_ids) else []
        return [
            Hit(patient=names[int(pid)], score=float(score), rank=rank, kind=kind, signature=signature,
                slides=tuple(slides[int(pid)]), labels=labels[int(pid)], percentile=pct)
            for rank, (pid, score, pct) in enumerate(zip(hit_ids, scores, context), start=1)
        ]

    @property
    def score_context(self):
        """Each vector set's reference pair scores, for a hit's percentile (what "close" means on this archive)."""
        context = self.__dict__.get("_score_context")
        if context is None:
            from eagle_index.score_context import ScoreContext

            with self._tiles_lock:
                context = self.__dict__.get("_score_context") or ScoreContext(self.catalog, cache_dir=self.settings.index_dir)
                self.__dict__["_score_context"] = context
        return context

    def allowed_ids(self, filters: SearchFilters) -> set[int] | None:
        """Patients the label, cohort and annotation filters allow (None: no such filter)."""
        return allowed_ids(self.catalog, filters, self.settings.tiling.tile_um)

    def match_patients(self, patient: str, other: str, pairs: int = 5) -> tuple[TilePair, ...]:
        """The most similar tile pairs between two stored patients' selected tiles (with slide ids)."""
        ids = self.catalog.patient_ids([patient, other])
        tiles, slide_ids = [], []
        for name in (patient, other):
            if name not in ids:
                raise NotFoundError(f"unknown patient {name!r}")
            selected = self._stored_tiles(ids[name])
            if selected is None:
                raise NotFoundError(f"patient {name!r} has no slide artifacts (imported vectors): no tiles to match")
            tiles.append(selected)
            slide_ids.append(self.catalog.done_slide_ids(ids[name]))
        return tuple(replace(p, query_slide_id=slide_ids[0].get(p.query_slide), hit_slide_id=slide_ids[1].get(p.hit_slide))
                     for p in match_tiles(tiles[0], tiles[1], pairs))

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate_retrieval(self, label: str, ks=(1, 3, 5), kind: str | None = None, signature: str | None = None,
                           cohort: str | None = None, exclude_same_site: bool = False, site_label: str = "site") -> RetrievalEvaluation:
        """Leave-one-patient-out retrieval over every patient with `label` (and a vector): each one
        queries all the others (optionally not those of its site); Acc@k, MV@k, mAP@k per class."""
        ks = sorted({int(k) for k in ks})
        if not ks or ks[0] < 1:
            raise InputError("k values must be positive integers")
        values = self.catalog.label_values(label)
        if not values:
            raise NotFoundError(f"no patient has label {label!r} (labels: {', '.join(self.catalog.label_names()) or 'none'})")
        info = self.catalog.resolve_vector_set(kind, signature)
        kind, signature = info.kind, info.signature
        pool = set(values)
        if cohort:
            pool &= self.catalog.cohort_member_ids([cohort])
        ids, raw = self.catalog.load_vectors(kind, signature, sorted(pool))
        if len(ids) < 2:
            raise InputError(f"only {len(ids)} patient(s) have both label {label!r} and a {kind!r} vector")
        classes = sorted({values[int(i)] for i in ids})
        code = {c: n for n, c in enumerate(classes)}
        y = np.array([code[values[int(i)]] for i in ids])
        groups = None
        if exclude_same_site:
            sites = site_map(self.catalog, site_label)
            site_code: dict[str, int] = {}
            groups = np.array([site_code.setdefault(sites[int(i)], len(site_code)) if int(i) in sites else -1 for i in ids])
        nb_idx, nb_scores = leave_one_out_neighbours(l2_normalized(raw), max(ks), groups)
        nb_labels = np.where(nb_idx >= 0, y[np.clip(nb_idx, 0, None)], -1)
        metrics = retrieval_metrics(y, nb_labels, nb_scores, ks, classes)
        return RetrievalEvaluation(label, kind, signature, cohort, len(ids), tuple(ks), exclude_same_site,
                                   metrics["overall"], metrics["macro"], metrics["classes"])
