"""Typed results the service hands to its front ends.

Why: front ends render these and never add to them, so every field a page or a `--json`
output shows is decided here once. `as_dict()` gives the JSON shape (the CLI's and the
API's contract); frozen dataclasses make "the web layer adds a key" impossible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


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


@dataclass(frozen=True)
class ProbeResult(Mapping):
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

    def __getitem__(self, key: str):
        return self.as_dict()[key]

    def __iter__(self):
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeResult":
        """A probe from its JSON (as a running server answers; keys the server adds are dropped)."""
        detailed = "params" in data
        return cls(name=data["name"], label=data["label"], kind=data["kind"], signature=data["signature"],
                   model=data["model"], status=data["status"], error=data.get("error"), created_at=data.get("created_at"),
                   classes=tuple(data.get("classes") or ()), positive=data.get("positive"), folds=data.get("folds"),
                   seed=data.get("seed"), n=data.get("n"), metrics={m: data.get(m) for m in PROBE_METRICS},
                   detail={k: data.get(k) for k in _PROBE_DETAIL} if detailed else None)
