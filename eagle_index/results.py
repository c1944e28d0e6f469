"""Typed results the service hands to its front ends.

Why: front ends render these and never add to them, so every field a page or a `--json`
output shows is decided here once. `as_dict()` gives the JSON shape (the CLI's and the
API's contract); frozen dataclasses make "the web layer adds a key" impossible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


class Record(Mapping):
    """A typed result whose read-only mapping view is its JSON (`as_dict()`): `stats["patients"]`
    works as it did on the dict, a script written against the JSON keeps working, and nothing can
    add a key. Equal to a mapping with the same JSON."""

    def as_dict(self) -> dict:
        raise NotImplementedError

    def __getitem__(self, key: str):
        return self.as_dict()[key]

    def __iter__(self):
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def __eq__(self, other) -> bool:
        if isinstance(other, Mapping):
            return self.as_dict() == (other.as_dict() if isinstance(other, Record) else dict(other))
        return NotImplemented

    __hash__ = None


def json_default(value):
    """`default=` for the CLI's json.dumps: typed results as their JSON, anything else as its text."""
    return value.as_dict() if hasattr(value, "as_dict") else str(value)


@dataclass(frozen=True)
class TilePair:
    """A query tile and a hit tile whose Virchow2 class tokens are close (cosine `similarity`).

    `*_slide_id` is the catalog id of the slide the tile lies in (None for a slide embedded on
    the fly), so a front end can show the tile image; `*_tile_rank` is the tile's attention rank
    among its patient's selected tiles (1 = highest), so a reader knows how much the tile weighs.
    """

    similarity: float
    query_slide: str
    query_x_um: float
    query_y_um: float
    hit_slide: str
    hit_x_um: float
    hit_y_um: float
    query_slide_id: int | None = None
    hit_slide_id: int | None = None
    query_tile_rank: int | None = None  # 1 = the patient's tile with the highest attention among its selected tiles
    hit_tile_rank: int | None = None
    query_tiles: int | None = None  # how many selected tiles the query's ranks are out of
    hit_tiles: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TilePair":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Hit:
    """One look-alike patient: rank, cosine score, the vector set it came from, slides and labels."""

    patient: str
    score: float
    rank: int
    kind: str
    signature: str
    slides: tuple[str, ...] = ()
    labels: dict = field(default_factory=dict)
    explanation: tuple[TilePair, ...] | None = None
    # percent of random patient pairs of the same vector set scoring lower (score_context.py); None: too few patients
    percentile: float | None = None

    def as_dict(self) -> dict:
        out = {"patient": self.patient, "score": self.score, "rank": self.rank, "kind": self.kind,
               "signature": self.signature, "slides": list(self.slides), "labels": dict(self.labels),
               "percentile": self.percentile}
        if self.explanation is not None:
            out["explanation"] = [p.as_dict() for p in self.explanation]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Hit":
        """A hit from its JSON (as a running server answers)."""
        explanation = data.get("explanation")
        return cls(patient=data["patient"], score=float(data["score"]), rank=int(data["rank"]), kind=data["kind"],
                   signature=data["signature"], slides=tuple(data.get("slides") or ()), labels=dict(data.get("labels") or {}),
                   explanation=None if explanation is None else tuple(TilePair.from_dict(p) for p in explanation),
                   percentile=None if data.get("percentile") is None else float(data["percentile"]))


@dataclass(frozen=True)
class SearchResult:
    """A search: what was asked (`query`), the hits best first, the kNN vote if asked, notes."""

    query: dict
    hits: tuple[Hit, ...]
    vote: dict | None = None
    filters: dict | None = None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"query": dict(self.query), "hits": [h.as_dict() for h in self.hits], "vote": self.vote,
                "filters": self.filters, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict) -> "SearchResult":
        return cls(query=dict(data.get("query") or {}), hits=tuple(Hit.from_dict(h) for h in data.get("hits") or ()),
                   vote=data.get("vote"), filters=data.get("filters"), notes=tuple(data.get("notes") or ()))


@dataclass(frozen=True)
class IngestedSlide:
    """One slide embedded and stored by `ingest`: its patient (and where that id came from), tiles, MPP."""

    file: str
    patient: str
    patient_from: str
    slide: str
    tiles: int
    mpp: float
    mpp_source: str
    seconds: float


@dataclass(frozen=True)
class SkippedSlide:
    """A slide whose content is already stored (same fingerprint, maybe under another name)."""

    file: str
    reason: str


@dataclass(frozen=True)
class FailedSlide:
    """A slide that could not be embedded: recorded as a failed job, never as a patient."""

    file: str
    error: str


@dataclass(frozen=True)
class IngestReport:
    """What one `ingest` did; `as_dict()` is the `ingest --json` shape."""

    ingested: tuple[IngestedSlide, ...] = ()
    skipped: tuple[SkippedSlide, ...] = ()
    failed: tuple[FailedSlide, ...] = ()
    patients: tuple[str, ...] = ()  # the patients whose vectors were re-aggregated

    def as_dict(self) -> dict:
        return {"ingested": [asdict(i) for i in self.ingested], "skipped": [asdict(s) for s in self.skipped],
                "failed": [asdict(f) for f in self.failed], "patients": list(self.patients)}


PROBE_METRICS = ("auroc", "auprc", "balanced_accuracy", "f1")  # each {"mean", "sd"} over folds
_PROBE_DETAIL = ("per_fold", "pooled", "counts", "seconds", "params")


@dataclass(frozen=True, eq=False)
class ProbeResult(Record):
    """A stored probe: definition, status and cross-validated metrics (mean ± sd per metric).

    `detailed` results (`get`, `train`) also carry per-fold and pooled metrics, counts and the
    training parameters; `list` gives the short form. Read-only mapping access (`probe["auroc"]`)
    is the `as_dict()` view, so a script written against the JSON keeps working and nothing can
    add a key.
    """

    name: str
    label: str
    kind: str
    signature: str
    model: str
    status: str
    error: str | None = None
    created_at: str | None = None
    classes: tuple[str, ...] = ()
    positive: str | None = None
    folds: int | None = None
    seed: int | None = None
    n: int | None = None
    metrics: dict = field(default_factory=dict)  # PROBE_METRICS -> {"mean", "sd"} (None before training ends)
    detail: dict | None = None  # per_fold, pooled, counts, seconds, params (None in the short form)

    def as_dict(self) -> dict:
        out = {"name": self.name, "label": self.label, "kind": self.kind, "signature": self.signature,
               "model": self.model, "status": self.status, "error": self.error, "created_at": self.created_at,
               "classes": list(self.classes), "positive": self.positive, "folds": self.folds, "seed": self.seed,
               "n": self.n}
        out.update({m: self.metrics.get(m) for m in PROBE_METRICS})
        if self.detail is not None:
            out.update({k: self.detail.get(k) for k in _PROBE_DETAIL})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeResult":
        """A probe from its JSON (as a running server answers; keys the server adds are dropped)."""
        detailed = "params" in data
        return cls(name=data["name"], label=data["label"], kind=data["kind"], signature=data["signature"],
                   model=data["model"], status=data["status"], error=data.get("error"), created_at=data.get("created_at"),
                   classes=tuple(data.get("classes") or ()), positive=data.get("positive"), folds=data.get("folds"),
                   seed=data.get("seed"), n=data.get("n"), metrics={m: data.get(m) for m in PROBE_METRICS},
                   detail={k: data.get(k) for k in _PROBE_DETAIL} if detailed else None)


# -- catalog overview and the ingestion queue -----------------------------------------------------------
@dataclass(frozen=True, eq=False)
class VectorSetSummary(Record):
    kind: str
    signature: str
    dim: int
    count: int
    generation: int

    def as_dict(self) -> dict:
        return {"kind": self.kind, "signature": self.signature, "dim": self.dim, "count": self.count, "generation": self.generation}


@dataclass(frozen=True, eq=False)
class CatalogStats(Record):
    """`stats`: patients and slides with vectors, labels, failed inputs, vectors by kind, every vector set."""

    patients: int
    slides: int
    labels: int
    failed: int
    vectors: dict  # kind -> vectors
    vector_sets: tuple[VectorSetSummary, ...] = ()

    def as_dict(self) -> dict:
        return {"patients": self.patients, "slides": self.slides, "labels": self.labels, "failed": self.failed,
                "vectors": dict(self.vectors), "vector_sets": [v.as_dict() for v in self.vector_sets]}

    @classmethod
    def from_dict(cls, data: dict) -> "CatalogStats":
        return cls(int(data["patients"]), int(data["slides"]), int(data["labels"]), int(data.get("failed", 0)),
                   dict(data.get("vectors") or {}), tuple(VectorSetSummary(**v) for v in data.get("vector_sets") or ()))


@dataclass(frozen=True, eq=False)
class RunningJob(Record):
    id: int
    file: str
    patient: str | None
    attempt: int
    worker: str | None
    started_at: str | None
    progress: dict | None

    def as_dict(self) -> dict:
        return {"id": self.id, "file": self.file, "patient": self.patient, "attempt": self.attempt, "worker": self.worker,
                "started_at": self.started_at, "progress": self.progress}


@dataclass(frozen=True, eq=False)
class JobFailure(Record):
    file: str
    error: str | None
    attempts: int
    id: int
    at: str | None

    def as_dict(self) -> dict:
        return {"file": self.file, "error": self.error, "attempts": self.attempts, "id": self.id, "at": self.at}


@dataclass(frozen=True, eq=False)
class Throughput(Record):
    slides_last_hour: int
    slides_per_hour: float | None
    mean_seconds_per_slide: float | None

    def as_dict(self) -> dict:
        return {"slides_last_hour": self.slides_last_hour, "slides_per_hour": self.slides_per_hour,
                "mean_seconds_per_slide": self.mean_seconds_per_slide}


@dataclass(frozen=True, eq=False)
class QueueSummary(Record):
    """The job queue: jobs per state (lifecycle order), running jobs, recent failures, throughput."""

    queue: dict  # state -> jobs
    running: tuple[RunningJob, ...]
    failures: tuple[JobFailure, ...]
    throughput: Throughput

    def as_dict(self) -> dict:
        return {"queue": dict(self.queue), "running": [r.as_dict() for r in self.running],
                "failures": [f.as_dict() for f in self.failures], "throughput": self.throughput.as_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "QueueSummary":
        return cls(dict(data["queue"]), tuple(RunningJob(**r) for r in data.get("running") or ()),
                   tuple(JobFailure(**f) for f in data.get("failures") or ()), Throughput(**data["throughput"]))


@dataclass(frozen=True, eq=False)
class IndexSummary(Record):
    kind: str
    signature: str
    vectors: int
    dim: int

    def as_dict(self) -> dict:
        return {"kind": self.kind, "signature": self.signature, "vectors": self.vectors, "dim": self.dim}


@dataclass(frozen=True, eq=False)
class StatusReport(Record):
    """`status`: the queue, the indexes, patients with vectors, Ray workers, the schema revision
    (current and head). The CLI adds who holds the catalog (`owner`) to what it prints."""

    jobs: QueueSummary
    index: tuple[IndexSummary, ...]
    patients: int
    workers: tuple[dict, ...] = ()
    schema: dict = field(default_factory=dict)  # {"current", "head"}

    def as_dict(self) -> dict:
        out = self.jobs.as_dict()
        out.update(index=[i.as_dict() for i in self.index], patients=self.patients, workers=[dict(w) for w in self.workers],
                   schema=dict(self.schema))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "StatusReport":
        return cls(QueueSummary.from_dict(data), tuple(IndexSummary(**i) for i in data.get("index") or ()),
                   int(data.get("patients", 0)), tuple(data.get("workers") or ()), dict(data.get("schema") or {}))


# -- evaluation ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RetrievalEvaluation(Record):
    """Leave-one-patient-out retrieval of a label: Acc@k, MV@k and mAP@k overall (micro), macro and per class."""

    label: str
    kind: str
    signature: str
    cohort: str | None
    patients: int
    ks: tuple[int, ...]
    exclude_same_site: bool
    overall: dict
    macro: dict
    classes: dict  # class -> {"n", metrics...}

    def as_dict(self) -> dict:
        return {"label": self.label, "kind": self.kind, "signature": self.signature, "cohort": self.cohort,
                "patients": self.patients, "ks": list(self.ks), "exclude_same_site": self.exclude_same_site,
                "overall": self.overall, "macro": self.macro, "classes": self.classes}

    @classmethod
    def from_dict(cls, data: dict) -> "RetrievalEvaluation":
        return cls(data["label"], data["kind"], data["signature"], data.get("cohort"), int(data["patients"]),
                   tuple(int(k) for k in data["ks"]), bool(data.get("exclude_same_site")), data["overall"], data["macro"],
                   data["classes"])


# -- cohorts ------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CohortMember(Record):
    patient: str
    score: float | None
    labels: dict | None = None  # a saved cohort's members carry their labels; a preview's do not

    def as_dict(self) -> dict:
        out = {"patient": self.patient, "score": self.score}
        if self.labels is not None:
            out["labels"] = dict(self.labels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CohortMember":
        return cls(data["patient"], data.get("score"), data.get("labels"))


@dataclass(frozen=True, eq=False)
class CohortSummary(Record):
    """A saved cohort: its definition, member count and timestamps; `members` (best score first)
    when shown (`cohort show`), None in lists."""

    name: str
    definition: dict
    member_count: int
    materialized_at: str | None
    created_at: str | None
    updated_at: str | None
    members: tuple[CohortMember, ...] | None = None

    def as_dict(self) -> dict:
        out = {"name": self.name, "definition": self.definition, "member_count": self.member_count,
               "materialized_at": self.materialized_at, "created_at": self.created_at, "updated_at": self.updated_at}
        if self.members is not None:
            out["members"] = [m.as_dict() for m in self.members]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CohortSummary":
        members = data.get("members")
        return cls(data["name"], data["definition"], int(data["member_count"]), data.get("materialized_at"),
                   data.get("created_at"), data.get("updated_at"),
                   None if members is None else tuple(CohortMember.from_dict(m) for m in members))


@dataclass(frozen=True, eq=False)
class CohortPreview(Record):
    """A definition materialised without saving: member count, the resolved definition, the first members."""

    count: int
    definition: dict
    members: tuple[CohortMember, ...]

    def as_dict(self) -> dict:
        return {"count": self.count, "definition": self.definition, "members": [m.as_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, data: dict) -> "CohortPreview":
        return cls(int(data["count"]), data["definition"], tuple(CohortMember.from_dict(m) for m in data.get("members") or ()))


# -- listings -----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Page(Record):
    """One page of a listing (patients, slides): `total` matches, `items` from `offset`, at most `limit`."""

    total: int
    limit: int
    offset: int
    items: tuple[dict, ...]

    def as_dict(self) -> dict:
        return {"total": self.total, "limit": self.limit, "offset": self.offset, "items": [dict(i) for i in self.items]}
