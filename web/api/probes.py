"""Probes: train in the background (poll the task or the probe), results, ROC curves, few-shot
curves, apply to the archive, ranked candidates (JSON and CSV)."""

from __future__ import annotations

import uuid

import numpy as np
from flask import Blueprint, jsonify, send_file

from web.api.params import bool_arg, bool_value, choice, int_field, json_body, page_args, service, str_field, tasks
from web.errors import ApiError

bp = Blueprint("probes", __name__)

FOLDS_MAX = 20


def _with_task(summary) -> dict:
    """The probe's JSON plus its training task (a fresh dict: the service's `ProbeResult` stays as it is)."""
    task = tasks().find("probe-train", probe=summary.name)
    return {**summary.as_dict(), "task": task.as_dict(with_result=False) if task is not None else None}


def _thumbnails(svc, rows: list[dict]) -> list[dict]:
    with_files = svc.browse.with_slide_files([r["patient"] for r in rows])
    for row in rows:
        row["thumbnail_url"] = f"/api/v1/patients/{row['patient']}/thumbnail.png" if row["patient"] in with_files else None
    return rows


@bp.get("/probes")
def probes():
    return jsonify([_with_task(p) for p in service().probes.list()])


@bp.post("/probes")
def train():
    """Start training {"label", "kind", "model", "folds", "seed", "name", "positive", "vs_rest", "cohort"};
    202 with the probe's name and a task to poll (or poll GET /probes/<name>)."""
    body = json_body()
    label = str_field(body, "label", required=True)
    options = {
        "kind": str_field(body, "kind"),
        "model": str_field(body, "model", default="logreg"),
        "folds": int_field(body, "folds", 5, 2, FOLDS_MAX),
        "seed": int_field(body, "seed", 0, 0, 2**31 - 1),
        "name": str_field(body, "name", max_len=100),
        "signature": str_field(body, "signature"),
        "positive": str_field(body, "positive"),
        "vs_rest": bool_value(body.get("vs_rest"), "vs_rest"),
        "cohort": str_field(body, "cohort"),
    }
    if options["name"] is not None and ("/" in options["name"] or "\\" in options["name"]):
        raise ApiError(400, "name may not contain slashes", field="name")
    svc = service()
    job = svc.probes.begin(label, **options)  # input errors surface here, before anything runs
    task = tasks().submit("probe-train", job.run, probe=job.name)
    return jsonify({"probe": job.name, "task": task.id, "status_url": f"/api/v1/probes/{job.name}"}), 202


@bp.get("/probes/<name>")
def probe(name: str):
    """The probe's definition, status (training | done | failed), progress while training, and metrics."""
    return jsonify(_with_task(service().probes.get(name)))


@bp.delete("/probes/<name>")
def delete(name: str):
    svc = service()
    if svc.probes.get(name).status == "training":
        task = tasks().find("probe-train", probe=name)
        if task is not None and task.state in ("queued", "running"):
            raise ApiError(409, f"probe {name!r} is still training")
    svc.probes.delete(name)
    return jsonify({"deleted": name})


def roc_points(positive: np.ndarray, score: np.ndarray) -> tuple[list[list[float]], float | None]:
    from sklearn.metrics import roc_auc_score, roc_curve

    if positive.all() or not positive.any():
        return [], None
    fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=True)
    return [[round(float(f), 5), round(float(t), 5)] for f, t in zip(fpr, tpr)], float(roc_auc_score(positive, score))


@bp.get("/probes/<name>/roc")
def roc(name: str):
    """ROC curves of the out-of-fold predictions: pooled over folds, and each fold's (positive class vs rest)."""
    svc = service()
    summary = svc.probes.get(name)
    if summary["status"] != "done":
        raise ApiError(409, f"probe {name!r} is {summary['status']}; its ROC curve exists once training is done")
    data = svc.probes.training_set(name)
    classes = summary["classes"]
    target = int(summary["params"].get("target", classes.index(summary["positive"]) if summary["positive"] in classes else 1))
    labels = np.asarray(data.get("labels", []))
    oof = np.asarray(data.get("oof", []), dtype=np.float64)
    folds = np.asarray(data.get("fold", []), dtype=np.int64)
    if not len(labels) or oof.ndim != 2:
        raise ApiError(409, f"probe {name!r} has no out-of-fold predictions stored")
    positive = labels == classes[target]
    points, auc = roc_points(positive, oof[:, target])
    per_fold = []
    for fold in sorted(set(folds.tolist())):
        rows = folds == fold
        fold_points, fold_auc = roc_points(positive[rows], oof[rows, target])
        per_fold.append({"fold": fold, "auroc": fold_auc, "points": fold_points, "n": int(rows.sum())})
    return jsonify({"probe": name, "positive": classes[target], "n": int(len(labels)), "n_positive": int(positive.sum()),
                    "auroc": auc, "points": points, "folds": per_fold})


@bp.post("/fewshot")
def fewshot():
    """Few-shot curve {"label", "kind", "signature", "ks", "draws", "seed", "positive", "vs_rest", "cohort"}: 202 with a task."""
    body = json_body()
    label = str_field(body, "label", required=True)
    kind = str_field(body, "kind")  # None: the default set (eagle if stored), as in `probe fewshot`
    signature = str_field(body, "signature")
    raw_ks = body.get("ks", [1, 2, 4, 8, 16, 32])
    if not isinstance(raw_ks, list) or not raw_ks or len(raw_ks) > 12 or not all(
            isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 10000 for k in raw_ks):
        raise ApiError(400, "ks must be a list of up to 12 integers between 1 and 10000", field="ks")
    draws = int_field(body, "draws", 10, 1, 100)
    seed = int_field(body, "seed", 0, 0, 2**31 - 1)
    positive = str_field(body, "positive")
    vs_rest = bool_value(body.get("vs_rest"), "vs_rest")
    cohort = str_field(body, "cohort")
    svc = service()
    svc.probes.dataset(label, kind, signature, positive, vs_rest, cohort)  # input errors now, not in the task

    def work(progress):
        return svc.probes.fewshot(label, kind, ks=sorted(set(raw_ks)), draws=draws, seed=seed, signature=signature,
                                  positive=positive, vs_rest=vs_rest, cohort=cohort, progress=progress)

    task = tasks().submit("fewshot", work, label=label, kind=kind)
    return jsonify({"task": task.id, "status_url": f"/api/v1/tasks/{task.id}"}), 202


@bp.post("/compare")
def compare():
    """Two probes per label on the same patients and folds (DeLong, Benjamini-Hochberg) {"labels", "kind", "against",
    "model", "against_model", "folds", "seed", "signature", "against_signature", "positive"}: 202 with a task
    (`probe compare` of the CLI while a server holds the catalog)."""
    from eagle_index.probing.models import MODELS

    body = json_body()
    labels = body.get("labels")
    if not isinstance(labels, list) or not labels or len(labels) > 100 or not all(isinstance(x, str) and x for x in labels):
        raise ApiError(400, "labels must be a list of 1 to 100 label names", field="labels")
    options = {
        "kind": str_field(body, "kind"),
        "against": str_field(body, "against", default="chief"),
        "model": choice(str_field(body, "model", default="logreg"), "model", tuple(MODELS)),
        "against_model": str_field(body, "against_model"),
        "folds": int_field(body, "folds", 5, 2, FOLDS_MAX),
        "seed": int_field(body, "seed", 0, 0, 2**31 - 1),
        "signature": str_field(body, "signature"),
        "against_signature": str_field(body, "against_signature"),
        "positive": str_field(body, "positive"),
    }
    if options["against_model"] is not None:
        choice(options["against_model"], "against_model", tuple(MODELS))
    svc = service()
    svc.catalog.resolve_vector_set(options["kind"], options["signature"])  # unknown vector sets: an error now, not in the task
    svc.catalog.resolve_vector_set(options["against"], options["against_signature"])

    def work(progress):
        return svc.probes.compare(labels, progress=progress, **options)

    task = tasks().submit("compare", work, labels=labels)
    return jsonify({"task": task.id, "status_url": f"/api/v1/tasks/{task.id}"}), 202


@bp.post("/probes/<name>/apply")
def apply(name: str):
    """Score the archive (or a cohort) {"cohort", "top", "exclude_training"}; scores are stored; the top candidates."""
    body = json_body()
    cohort = str_field(body, "cohort")
    top = int_field(body, "top", 50, 1, 10000)
    exclude_training = bool_value(body.get("exclude_training"), "exclude_training")
    svc = service()
    result = svc.probes.apply(name, cohort=cohort, top=top, exclude_training=exclude_training)
    _thumbnails(svc, result["candidates"])
    return jsonify(result)


def _stored_candidates(svc, name: str, exclude_training: bool = False) -> list[dict]:
    """The stored scores by rank; without the probe's training patients when `exclude_training` (ranks kept),
    as `apply` lists them: the page's table and its CSV download agree."""
    summary = svc.probes.get(name)
    rows = svc.probes.scores(name)
    training = set(svc.probes.training_set(name).get("patient_ids", []))
    if exclude_training:
        rows = [r for r in rows if r["patient_id"] not in training]
    labels = svc.browse.labels_of([r["patient_id"] for r in rows])
    return [{"rank": r["rank"], "patient": r["patient"], "probability": r["probability"], "predicted": r["predicted"],
             "label_value": labels[r["patient_id"]].get(summary["label"]), "in_training": r["patient_id"] in training}
            for r in rows]


@bp.get("/probes/<name>/candidates")
def candidates(name: str):
    """The stored scores of the probe's latest application, by rank (paged), with known label values;
    ?exclude_training=1 leaves the training patients out (ranks kept)."""
    svc = service()
    limit, offset = page_args(50, 1000)
    rows = _stored_candidates(svc, name, bool_arg("exclude_training"))
    page = _thumbnails(svc, rows[offset:offset + limit])
    return jsonify({"probe": name, "total": len(rows), "limit": limit, "offset": offset, "candidates": page})


@bp.get("/probes/<name>/candidates.csv")
def candidates_csv(name: str):
    from eagle_index.probes import write_candidates_csv

    svc = service()
    rows = _stored_candidates(svc, name, bool_arg("exclude_training"))
    if not rows and not svc.probes.scores(name, 1):
        raise ApiError(404, f"probe {name!r} has not been applied yet: apply it to the archive first")
    folder = svc.settings.data_dir / "cache" / "exports"
    out = write_candidates_csv(rows, folder / f"{uuid.uuid4().hex}.csv")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64] or "probe"
    response = send_file(out, mimetype="text/csv", as_attachment=True, download_name=f"{safe}-candidates.csv", max_age=0)
    response.call_on_close(lambda: out.unlink(missing_ok=True))
    return response


@bp.get("/probes/<name>/training-set")
def training_set(name: str):
    """Patients, labels, fold of each and out-of-fold probabilities of a trained probe."""
    data = service().probes.training_set(name)
    keep = ("patients", "labels", "fold", "oof")
    return jsonify({k: data.get(k, []) for k in keep})

