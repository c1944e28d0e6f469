"""Probes: train a lightweight biomarker model on stored vectors, evaluate it, rank the archive.

`ProbeService` is the topic service behind `EagleService.probes` (CLI, web and daemon call it);
the pure parts live in `eagle_index.probing` and the SQL in `eagle_index.store.probes_repo`.

Data: one row per patient that has both a value of the label and a vector of the kind (and
signature); the others are skipped and counted (`counts` in every report). Label values are
strings; their distinct values are the classes (sorted). The *positive* (target) class is the
one ranked by `apply` and tested by `compare`: `positive=` when given, else for two classes a
value that reads as positive (1, true, yes, positive, pos, mut, mutated, mutant, present,
high, msih, msi-h) when exactly one does, else the rarer class (ties: the later in sort
order); for more classes the rarest. `vs_rest=True` merges every other value into
"not <positive>" (a binary probe from a multi-valued label).

A probe is stored with everything needed to reproduce and audit it: the label, vector kind
and signature, model hyper-parameters, seed, folds, the training set (patients, labels,
fold of each, out-of-fold probabilities), the metrics, and the fitted parameters as
safetensors bytes. Applying a probe to vectors of another signature is refused.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eagle_index.errors import InputError, NotFoundError
from eagle_index.probing import cv as cvlib
from eagle_index.probing.delong import benjamini_hochberg, delong_test
from eagle_index.probing.metrics import METRICS
from eagle_index.probing.models import FittedProbe, fit, model_spec
from eagle_index.results import ProbeResult
from eagle_index.store.probes_repo import ProbeRecord, ProbeRepo, default_probe_name

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
POSITIVE_WORDS = {"1", "true", "yes", "positive", "pos", "mut", "mutated", "mutant", "present", "high", "msih", "msi-h"}


@dataclass
class LabelledSet:
    """Vectors and class indices of the patients a probe trains or is evaluated on."""

    label: str
    kind: str
    signature: str
    patient_ids: np.ndarray  # int64 [N], ascending
    patients: list[str]  # external ids, same order
    vectors: np.ndarray  # raw float32 [N, D]
    y: np.ndarray  # int64 [N], indices into classes
    classes: list[str]
    target: int
    counts: dict = field(default_factory=dict)

    @property
    def positive(self) -> str:
        return self.classes[self.target]


def choose_target(classes: list[str], counts: list[int], positive: str | None = None) -> int:
    """Index of the positive class (see the module docstring for the rule)."""
    if positive is not None:
        if positive not in classes:
            raise InputError(f"--positive {positive!r} is not a value of the label (values: {', '.join(classes)})")
        return classes.index(positive)
    if len(classes) == 2:
        looks_positive = [i for i, c in enumerate(classes) if c.strip().lower() in POSITIVE_WORDS]
        if len(looks_positive) == 1:
            return looks_positive[0]
    rarest = min(counts)
    return max(i for i, n in enumerate(counts) if n == rarest)


class TrainingJob:
    """A probe whose row exists (status `training`) and whose data are checked; `run` trains it.

    The web UI starts one from a request (errors in the input surface at once), then calls
    `run` in a background thread and polls `ProbeService.get(name)["status"]`.
    """

    def __init__(self, probes: ProbeService, record: ProbeRecord, data: LabelledSet, spec, fold_of: np.ndarray, params: dict):
        self.probes, self.record, self.data, self.spec, self.fold_of, self.params = probes, record, data, spec, fold_of, params

    @property
    def name(self) -> str:
        return self.record.name

    def run(self, progress: Progress | None = None) -> ProbeResult:
        try:
            return self._run(progress)
        except BaseException as exc:
            self.probes.repo.fail(self.record.id, f"{type(exc).__name__}: {exc}")
            raise

    def _run(self, progress: Progress | None) -> ProbeResult:
        data, started = self.data, time.perf_counter()
        folds = int(self.fold_of.max()) + 1
        result = cvlib.cross_validate(data.vectors, data.y, len(data.classes), data.target, self.spec, self.fold_of,
                                      seed=self.params["seed"], progress=progress, total_steps=folds + 1)
        final = fit(self.spec, data.vectors, data.y, len(data.classes), seed=self.params["seed"])
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(folds + 1, folds + 1, "final model on all patients")
        metrics = {**result.summary, "per_fold": result.per_fold, "pooled": result.pooled, "counts": data.counts,
                   "seconds": round(seconds, 3), "final_model": final.info}
        training_set = {
            "patients": data.patients,
            "patient_ids": data.patient_ids.tolist(),
            "labels": [data.classes[i] for i in data.y],
            "fold": result.fold_of.tolist(),
            "oof": result.oof.tolist(),
        }
        self.probes.repo.finish(self.record.id, training_set, metrics, final.to_bytes())
        log.info("probe %s: AUROC %.3f ± %.3f in %.1f s", self.name, result.summary["auroc"]["mean"], result.summary["auroc"]["sd"], seconds)
        return self.probes.get(self.name)


class ProbeService:
    def __init__(self, catalog):
        self.catalog = catalog
        self.repo = ProbeRepo(catalog)

    # -- data ----------------------------------------------------------------------------
    def _vector_set(self, kind: str | None, signature: str | None):
        return self.catalog.resolve_vector_set(kind, signature)

    def _cohort_ids(self, cohort: str | None) -> np.ndarray | None:
        return None if cohort is None else np.asarray(sorted(self.catalog.cohort_member_ids([cohort])), dtype=np.int64)

    def dataset(self, label: str, kind: str | None = None, signature: str | None = None, positive: str | None = None,
                vs_rest: bool = False, cohort: str | None = None, restrict_to=None) -> LabelledSet:
        """The labelled patients with a vector of (kind, signature), optionally within a cohort or id set."""
        values = self.catalog.label_values(label)
        if not values:
            names = self.catalog.label_names()
            raise NotFoundError(f"no patient has a value of label {label!r} (labels: {', '.join(names) or 'none'})")
        info = self._vector_set(kind, signature)
        with_vector = self.catalog.vector_ids(info.kind, info.signature)
        keep = np.asarray(sorted(values), dtype=np.int64)
        counts = {"labelled": len(values), "labelled_without_vector": int(np.setdiff1d(keep, with_vector).size),
                  "vectors_without_label": int(np.setdiff1d(with_vector, keep).size)}
        keep = np.intersect1d(keep, with_vector)
        cohort_ids = self._cohort_ids(cohort)
        if cohort_ids is not None:
            counts["outside_cohort"] = int(np.setdiff1d(keep, cohort_ids).size)
            keep = np.intersect1d(keep, cohort_ids)
        if restrict_to is not None:
            counts["not_shared"] = int(np.setdiff1d(keep, restrict_to).size)
            keep = np.intersect1d(keep, np.asarray(restrict_to, dtype=np.int64))
        ids, vectors = self.catalog.load_vectors(info.kind, info.signature, keep.tolist()) if keep.size else (keep, None)
        raw = [values[int(i)] for i in ids]
        if vs_rest:
            if positive is None:
                raise InputError("--vs-rest needs --positive (the class to keep; every other value becomes the rest)")
            if positive not in raw:
                raise InputError(f"--positive {positive!r} is not a value of label {label!r} here (values: {', '.join(sorted(set(raw)))})")
            raw = [v if v == positive else f"not {positive}" for v in raw]
        classes = sorted(set(raw))
        if len(classes) < 2:
            raise InputError(
                f"label {label!r} has {len(classes)} distinct value(s) among the {len(raw)} patients with a {kind!r} vector "
                f"({', '.join(classes) or 'none'}); a probe needs at least two classes"
            )
        y = np.searchsorted(np.asarray(classes), np.asarray(raw)).astype(np.int64)
        per_class = np.bincount(y, minlength=len(classes)).tolist()
        counts.update({"used": len(ids), "per_class": dict(zip(classes, per_class))})
        names = self.catalog.external_ids(ids)
        target = choose_target(classes, per_class, positive)
        return LabelledSet(label, info.kind, info.signature, ids, [names[int(i)] for i in ids], vectors, y, classes, target, counts)

    # -- training ------------------------------------------------------------------------
    def begin(self, label: str, kind: str | None = None, model: str = "logreg", folds: int = 5, seed: int = 0,
              name: str | None = None, signature: str | None = None, positive: str | None = None, vs_rest: bool = False,
              cohort: str | None = None, model_params: dict | None = None) -> TrainingJob:
        """Check the input, reserve the probe's name (status `training`); `.run()` trains it."""
        if name is not None:
            from eagle_index.identifiers import check_identifier

            name = check_identifier("probe name", name)  # addressable: /api/v1/probes/<name>; never '..'
        spec = model_spec(model, **(model_params or {}))
        data = self.dataset(label, kind, signature, positive, vs_rest, cohort)
        cvlib.check_class_counts(data.y, data.classes, folds, f"label {label!r} ({data.kind} vectors)")
        fold_of = cvlib.stratified_folds(data.y, folds, seed)
        params = {"model": spec.as_dict(), "folds": folds, "seed": seed, "positive": data.positive, "target": data.target,
                  "vs_rest": vs_rest, "cohort": cohort, "features": "L2-normalized" + (", standardized" if spec.standardize else ""),
                  "dim": int(data.vectors.shape[1])}
        record = self.repo.create(name, default_probe_name(label, data.kind, model), label, data.kind, data.signature, model, params, data.classes)
        return TrainingJob(self, record, data, spec, fold_of, params)

    def train(self, label: str, kind: str | None = None, model: str = "logreg", folds: int = 5, seed: int = 0,
              progress: Progress | None = None, **options) -> ProbeResult:
        """Cross-validate, fit on all patients, store; the summary of the stored probe.

        `progress(done, total, message)` is called after each fold and after the final fit.
        """
        return self.begin(label, kind, model, folds, seed, **options).run(progress)

    # -- reading -------------------------------------------------------------------------
    @staticmethod
    def summary(record: ProbeRecord, detail: bool = True) -> ProbeResult:
        metrics, params = record.metrics or {}, record.params or {}
        return ProbeResult(
            name=record.name, label=record.label, kind=record.kind, signature=record.signature, model=record.model,
            status=record.status, error=record.error, created_at=record.created_at.isoformat() if record.created_at else None,
            classes=tuple(record.classes or ()), positive=params.get("positive"), folds=params.get("folds"),
            seed=params.get("seed"), n=(metrics.get("counts") or {}).get("used"),
            metrics={m: metrics.get(m) for m in METRICS},
            detail={**{k: metrics.get(k) for k in ("per_fold", "pooled", "counts", "seconds")}, "params": params} if detail else None,
        )

    def get(self, name: str) -> ProbeResult:
        return self.summary(self.repo.get(name, full=False))

    def list(self) -> list[ProbeResult]:
        return [self.summary(r, detail=False) for r in self.repo.all()]

    def delete(self, name: str) -> None:
        self.repo.delete(name)

    def recover(self) -> int:
        """At owner start-up, no training can be running: earlier unfinished ones failed."""
        return self.repo.fail_unfinished("interrupted: the process training this probe stopped before it finished")

    def training_set(self, name: str) -> dict:
        """Patients, labels, fold of each and out-of-fold probabilities of a trained probe."""
        return self.repo.get(name).training_set or {}

    def load(self, name: str) -> tuple[ProbeRecord, FittedProbe]:
        record = self.repo.get(name)
        if record.status != "done" or record.model_blob is None:
            why = f": {record.error}" if record.error else ""
            raise InputError(f"probe {name!r} is {record.status}{why}; only a trained probe can be applied")
        return record, FittedProbe.from_bytes(record.model_blob)

    # -- applying ------------------------------------------------------------------------
    @staticmethod
    def check_signature(record: ProbeRecord, signature: str) -> None:
        if signature != record.signature:
            raise InputError(
                f"probe {record.name!r} was trained on {record.kind} vectors of signature {record.signature}; "
                f"vectors of signature {signature} come from other weights or parameters and are refused (train a new probe on them)"
            )

    def score_vectors(self, name: str, vectors: np.ndarray, signature: str) -> np.ndarray:
        """Class probabilities [N, C] of vectors not in the catalog; refused for another signature."""
        record, model = self.load(name)
        self.check_signature(record, signature)
        return model.predict_proba(vectors)

    def apply(self, name: str, cohort: str | None = None, top: int | None = 50, exclude_training: bool = False,
              signature: str | None = None, store: bool = True) -> dict:
        """Score every patient (or a cohort's) with a vector of the probe's kind and signature; rank them.

        The probability of the probe's positive class is the score (rank 1 = highest; ties by
        patient id); `candidates` holds the top `top` (all when None or 0) of this application,
        leaving out the probe's training patients when `exclude_training` (ranks are kept).

        Stored scores (unless `store=False`) are the probe's view of the archive, which cohort
        filters read: applying to every patient replaces them; applying to a cohort adds or
        updates its members' scores (a probability depends only on the probe and the vector) and
        re-ranks everything stored.
        """
        record, model = self.load(name)
        if signature is not None:
            self.check_signature(record, signature)
        held = [s.signature for s in self.catalog.vector_sets(record.kind)]
        if record.signature not in held:
            raise InputError(
                f"probe {name!r} was trained on {record.kind} vectors of signature {record.signature}, which the catalog no longer "
                f"holds ({record.kind} signatures now: {', '.join(held) or 'none'}); vectors of another signature are refused: train a new probe"
            )
        cohort_ids = self._cohort_ids(cohort)
        ids, vectors = self.catalog.load_vectors(record.kind, record.signature, None if cohort_ids is None else cohort_ids.tolist())
        target = int(record.params.get("target", 1))
        if len(ids):
            proba = model.predict_proba(vectors)
        else:
            proba = np.zeros((0, len(record.classes)))
        score = proba[:, target]
        order = np.lexsort((ids, -score))
        ranks = np.empty(len(ids), dtype=np.int64)
        ranks[order] = np.arange(1, len(ids) + 1)
        predicted = [record.classes[i] for i in proba.argmax(axis=1)]
        if store:
            self._store_scores(record, ids, score, predicted, ranks, merge=cohort_ids is not None)
        training = set((record.training_set or {}).get("patient_ids", []))
        chosen = [i for i in order if not (exclude_training and int(ids[i]) in training)]
        chosen = chosen[:top] if top else chosen
        names = self.catalog.external_ids(ids[chosen])
        known = self.catalog.label_values(record.label)
        candidates = [
            {"rank": int(ranks[i]), "patient": names[int(ids[i])], "probability": float(score[i]), "predicted": predicted[i],
             "label_value": known.get(int(ids[i])), "in_training": int(ids[i]) in training}
            for i in chosen
        ]
        return {
            "probe": record.name, "label": record.label, "kind": record.kind, "signature": record.signature,
            "positive": record.classes[target], "cohort": cohort, "scored": len(ids),
            "cohort_without_vector": None if cohort_ids is None else int(np.setdiff1d(cohort_ids, ids).size),
            "stored": store, "candidates": candidates,
        }

    def _store_scores(self, record: ProbeRecord, ids, score, predicted, ranks, merge: bool) -> None:
        if merge:
            stored = self.repo.score_map(record.id)
            stored.update({int(pid): (float(p), pred) for pid, p, pred in zip(ids, score, predicted)})
            ids = np.fromiter(stored, dtype=np.int64, count=len(stored))
            score = np.array([stored[int(i)][0] for i in ids], dtype=np.float64)
            predicted = [stored[int(i)][1] for i in ids]
            ranks = np.empty(len(ids), dtype=np.int64)
            ranks[np.lexsort((ids, -score))] = np.arange(1, len(ids) + 1)
        self.repo.replace_scores(record.id, ids, score, predicted, ranks)

    def scores(self, name: str, top: int | None = None) -> list[dict]:
        """The stored scores of the probe's latest application, by rank."""
        return self.repo.scores(self.repo.get(name, full=False).id, top)

    # -- few-shot and comparison -------------------------------------------------------------
    def fewshot(self, label: str, kind: str | None = None, ks=cvlib.FEW_SHOT_KS, draws: int = 10, seed: int = 0,
                signature: str | None = None, positive: str | None = None, vs_rest: bool = False, cohort: str | None = None,
                progress: Progress | None = None) -> dict:
        """Logistic regression trained on k patients per class (draws per k), evaluated on the rest."""
        if draws < 1 or any(int(k) < 1 for k in ks):
            raise InputError("few-shot needs k >= 1 and at least one draw")
        data = self.dataset(label, kind, signature, positive, vs_rest, cohort)
        curve = cvlib.few_shot(data.vectors, data.y, data.classes, data.target, [int(k) for k in ks], draws, seed, progress=progress)
        return {"label": label, "kind": data.kind, "signature": data.signature, "model": "logreg", "classes": data.classes,
                "positive": data.positive, "n": len(data.y), "draws": draws, "seed": seed, "counts": data.counts, "curve": curve}

    def compare(self, labels: list[str], kind: str | None = None, against: str = "chief", model: str = "logreg",
                against_model: str | None = None, folds: int = 5, seed: int = 0, signature: str | None = None,
                against_signature: str | None = None, positive: str | None = None, progress: Progress | None = None) -> dict:
        """Two probes per label (e.g. EAGLE vs CHIEF vectors) on the same patients and folds.

        The out-of-fold predictions of each probe (every patient predicted by the fold model
        that did not see it) are compared with DeLong's test on the positive class's AUROC;
        p-values are adjusted across labels with Benjamini-Hochberg. Labels whose classes are
        too small for the folds are listed under `skipped`.
        """
        if not labels:
            raise InputError("name at least one label to compare")
        spec_a, spec_b = model_spec(model), model_spec(against_model or model)
        set_a, set_b = self._vector_set(kind, signature), self._vector_set(against, against_signature)
        shared = np.intersect1d(self.catalog.vector_ids(set_a.kind, set_a.signature), self.catalog.vector_ids(set_b.kind, set_b.signature))
        results, skipped, done = [], [], 0
        total = 2 * folds * len(labels)

        def step(_d, _t, message):
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total, message)

        for label in labels:
            try:
                a = self.dataset(label, set_a.kind, set_a.signature, positive, restrict_to=shared)
                cvlib.check_class_counts(a.y, a.classes, folds, f"label {label!r} (patients with both {kind} and {against} vectors)")
            except InputError as exc:
                skipped.append({"label": label, "reason": str(exc)})
                done += 2 * folds
                continue
            b = self.dataset(label, set_b.kind, set_b.signature, a.positive, restrict_to=a.patient_ids)
            fold_of = cvlib.stratified_folds(a.y, folds, seed)
            cv_a = cvlib.cross_validate(a.vectors, a.y, len(a.classes), a.target, spec_a, fold_of, seed, step)
            cv_b = cvlib.cross_validate(b.vectors, b.y, len(b.classes), b.target, spec_b, fold_of, seed, step)
            test = delong_test(a.y == a.target, cv_a.oof[:, a.target], cv_b.oof[:, b.target])
            results.append({
                "label": label, "n": len(a.y), "positive": a.positive, "classes": a.classes,
                "a": {**cv_a.summary, "pooled": cv_a.pooled}, "b": {**cv_b.summary, "pooled": cv_b.pooled},
                "delong": test.as_dict(),
            })
        if not results:
            raise InputError("no label could be compared: " + "; ".join(s["reason"] for s in skipped))
        for result, adjusted in zip(results, benjamini_hochberg([r["delong"]["p_value"] for r in results])):
            result["p_adjusted"] = float(adjusted)
        return {
            "a": {"kind": set_a.kind, "signature": set_a.signature, "model": spec_a.model},
            "b": {"kind": set_b.kind, "signature": set_b.signature, "model": spec_b.model},
            "folds": folds, "seed": seed, "shared_patients": int(shared.size),
            "method": "DeLong test on the positive class's AUROC of the pooled out-of-fold predictions; Benjamini-Hochberg across labels",
            "results": results, "skipped": skipped,
        }


def write_candidates_csv(candidates: list[dict], path: Path) -> Path:
    """Ranked candidates as CSV (temp file, then renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["rank", "patient", "probability", "predicted", "label_value", "in_training"]
    from eagle_index.atomic import atomic_path

    from eagle_index.formats.tables import csv_row  # formula-like cells (patient ids, label values) neutralised

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(csv_row(row.get(c) for c in columns) for row in candidates)
    return path


__all__ = ["LabelledSet", "ProbeService", "TrainingJob", "choose_target", "write_candidates_csv"]
