"""All SQL of probes: the `probes` and `probe_scores` tables. Labels and cohort members are
read where every other reader reads them (`Catalog`, `cohorts_repo`).

Values go out as plain Python objects (`ProbeRecord`, dicts, lists), never live ORM rows.
JSON columns are parsed here; `model_blob` stays bytes (safetensors, see probing.models).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, insert, select, update

from eagle_index.errors import InputError, NotFoundError
from eagle_index.store.catalog import Catalog
from eagle_index.store.models import Patient, Probe, ProbeScore, utcnow


@dataclass
class ProbeRecord:
    id: int
    name: str
    label: str
    kind: str
    signature: str
    model: str
    status: str
    error: str | None
    created_at: datetime | None
    params: dict = field(default_factory=dict)
    classes: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    training_set: dict | None = None  # only when loaded in full
    model_blob: bytes | None = None  # only when loaded in full


def _json(text: str | None, default):
    return json.loads(text) if text else default


class ProbeRepo:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- probes ----------------------------------------------------------------------
    def create(self, name: str | None, default_name: str, label: str, kind: str, signature: str, model: str,
               params: dict, classes: list[str]) -> ProbeRecord:
        """Insert a probe in state `training` under `name`, or a free `default_name[-N]`."""

        def write(session, name=name) -> ProbeRecord:
            if name is not None:
                if not name.strip():
                    raise InputError("empty probe name")
                if session.scalar(select(Probe.id).where(Probe.name == name)) is not None:
                    raise InputError(f"a probe named {name!r} exists already (delete it or choose another --name)")
            else:
                taken = set(session.scalars(select(Probe.name).where(Probe.name.like(f"{default_name}%"))))
                name, n = default_name, 1
                while name in taken:
                    n += 1
                    name = f"{default_name}-{n}"
            probe = Probe(name=name, label=label, kind=kind, signature=signature, model=model, status="training",
                          params=json.dumps(params), classes=json.dumps(classes), created_at=utcnow())
            session.add(probe)
            session.flush()
            return self._record(probe, full=False)

        return self.catalog.write(write)

    def finish(self, probe_id: int, training_set: dict, metrics: dict, model_blob: bytes, params: dict | None = None) -> None:
        values = {"status": "done", "error": None, "training_set": json.dumps(training_set), "metrics": json.dumps(metrics),
                  "model_blob": model_blob}
        if params is not None:
            values["params"] = json.dumps(params)
        self.catalog.write(lambda session: session.execute(update(Probe).where(Probe.id == probe_id).values(**values)), bookkeeping=True)

    def fail(self, probe_id: int, error: str) -> None:
        self.catalog.write(lambda session: session.execute(update(Probe).where(Probe.id == probe_id).values(status="failed", error=error)), bookkeeping=True)

    def fail_unfinished(self, error: str) -> int:
        """Probes left `training` by a process that died: mark them failed (owner start-up)."""
        return self.catalog.write(
            lambda session: session.execute(update(Probe).where(Probe.status == "training").values(status="failed", error=error)).rowcount or 0, bookkeeping=True)

    def get(self, name: str, full: bool = True) -> ProbeRecord:
        with self.catalog.transaction() as session:
            probe = session.scalar(select(Probe).where(Probe.name == name))
            if probe is None:
                names = session.scalars(select(Probe.name).order_by(Probe.name)).all()
                hint = f" (probes: {', '.join(names[:20])})" if names else " (no probes yet: train one with `probe train`)"
                raise NotFoundError(f"unknown probe {name!r}{hint}")
            return self._record(probe, full)

    def all(self) -> list[ProbeRecord]:
        columns = (Probe.id, Probe.name, Probe.label, Probe.kind, Probe.signature, Probe.model, Probe.status, Probe.error,
                   Probe.created_at, Probe.params, Probe.classes, Probe.metrics)
        with self.catalog.transaction() as session:
            rows = session.execute(select(*columns).order_by(Probe.created_at, Probe.id)).all()
        return [ProbeRecord(*row[:9], params=_json(row[9], {}), classes=_json(row[10], []), metrics=_json(row[11], {})) for row in rows]

    def delete(self, name: str) -> None:
        record = self.get(name, full=False)

        def write(session) -> None:
            session.execute(delete(ProbeScore).where(ProbeScore.probe_id == record.id))
            session.execute(delete(Probe).where(Probe.id == record.id))

        self.catalog.write(write)

    @staticmethod
    def _record(probe: Probe, full: bool) -> ProbeRecord:
        return ProbeRecord(
            probe.id, probe.name, probe.label, probe.kind, probe.signature, probe.model, probe.status, probe.error,
            probe.created_at, _json(probe.params, {}), _json(probe.classes, []), _json(probe.metrics, {}),
            _json(probe.training_set, None) if full else None, probe.model_blob if full else None,
        )

    # -- scores ----------------------------------------------------------------------
    def replace_scores(self, probe_id: int, patient_ids, probabilities, predicted: list[str], ranks) -> None:
        """The probe's stored scores become exactly these rows (one transaction)."""
        now = utcnow()
        rows = [
            {"probe_id": probe_id, "patient_id": int(pid), "probability": float(p), "predicted": pred, "rank": int(r), "created_at": now}
            for pid, p, pred, r in zip(patient_ids, probabilities, predicted, ranks)
        ]
        def write(session) -> None:
            session.execute(delete(ProbeScore).where(ProbeScore.probe_id == probe_id))
            if rows:
                session.execute(insert(ProbeScore), rows)

        self.catalog.write(write)

    def scores(self, probe_id: int, limit: int | None = None) -> list[dict]:
        query = (
            select(ProbeScore.rank, Patient.external_id, ProbeScore.patient_id, ProbeScore.probability, ProbeScore.predicted, ProbeScore.created_at)
            .join(Patient, Patient.id == ProbeScore.patient_id)
            .where(ProbeScore.probe_id == probe_id)
            .order_by(ProbeScore.rank)
        )
        if limit:
            query = query.limit(limit)
        with self.catalog.transaction() as session:
            rows = session.execute(query).all()
        return [{"rank": r[0], "patient": r[1], "patient_id": r[2], "probability": r[3], "predicted": r[4], "scored_at": r[5]} for r in rows]

    def score_map(self, probe_id: int) -> dict[int, tuple[float, str | None]]:
        """{patient id: (probability, predicted class)} of the probe's stored scores."""
        with self.catalog.transaction() as session:
            rows = session.execute(select(ProbeScore.patient_id, ProbeScore.probability, ProbeScore.predicted).where(ProbeScore.probe_id == probe_id))
            return {int(pid): (float(p), pred) for pid, p, pred in rows}


_NAME_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_probe_name(label: str, kind: str, model: str) -> str:
    """`<label>-<kind>-<model>`, with characters other than letters, digits, . _ - turned into _."""
    return "-".join(_NAME_SAFE.sub("_", part).strip("_") or "x" for part in (label, kind, model))
