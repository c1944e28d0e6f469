"""JSON API, `/api/v1`. Handlers parse and validate input, call the service, return JSON."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from web.errors import ApiError

api = Blueprint("api", __name__)


def _service():
    return current_app.config["EAGLE_SERVICE"]


def _int_arg(name: str, default: int, low: int = 1, high: int = 1000) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}", field=name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}", field=name)
    return value


@api.get("/health")
def health():
    owner = current_app.config["EAGLE_OWNER"]
    return jsonify({"ok": True, "pid": os.getpid(), "role": owner.get("role")})


@api.get("/stats")
def stats():
    return jsonify(_service().stats())


@api.get("/status")
def status():
    return jsonify(_service().status())


@api.get("/search")
def search():
    patient = request.args.get("patient")
    if not patient:
        raise ApiError(400, "patient is required", field="patient")
    k = _int_arg("k", 10)
    kind = request.args.get("kind", "eagle")
    signature = request.args.get("signature")
    return jsonify(_service().search_patient(patient, k=k, kind=kind, signature=signature))


@api.post("/labels")
def import_labels():
    """Upload a clinical table (multipart field `file`); stored under the data dir with a generated name."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ApiError(400, "a clinical table file is required", field="file")
    suffix = ".xlsx" if upload.filename.lower().endswith((".xlsx", ".xls")) else ".csv"
    folder = _service().settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="labels-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        upload.save(tmp)
        create = request.form.get("create_missing", "false").lower() in ("1", "true", "yes")
        report = _service().import_labels(Path(tmp), create_missing=create)
    finally:
        Path(tmp).unlink(missing_ok=True)
    data = report.as_dict()
    data["source"] = upload.filename
    return jsonify(data)


@api.get("/jobs")
def jobs():
    state = request.args.get("state")
    if state is not None and state not in ("queued", "running", "done", "failed", "skipped"):
        raise ApiError(400, f"unknown state {state!r}", field="state")
    return jsonify(_service().jobs.jobs(state=state, limit=_int_arg("limit", 100, 1, 10000)))


@api.post("/jobs")
def enqueue():
    """Queue slide files that lie under the server's watched/ingest folders (never elsewhere)."""
    body = request.get_json(silent=True) or {}
    paths = body.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ApiError(400, "paths must be a non-empty list of strings", field="paths")
    roots = [Path(r).resolve() for r in current_app.config["EAGLE_OWNER"].get("roots", [])]
    patient = body.get("patient")
    if patient is not None and not isinstance(patient, str):
        raise ApiError(400, "patient must be a string", field="patient")
    from eagle_index.fingerprint import slide_fingerprint
    from eagle_index.ingest.steps import find_slides

    accepted = []
    for raw in paths:
        path = Path(raw).resolve()
        if not any(path == root or root in path.parents for root in roots):
            raise ApiError(400, f"{raw} is outside the folders this server ingests from "
                                f"({', '.join(map(str, roots)) or 'none configured: start it with --watch'})", field="paths")
        for slide in find_slides([path]):
            state, job_id = _service().jobs.enqueue(slide_fingerprint(slide), str(slide), patient or _patient_of(slide))
            accepted.append({"file": str(slide), "state": state, "job": job_id})
    return jsonify({"jobs": accepted}), 202


@api.post("/jobs/<int:job_id>/retry")
def retry(job_id: int):
    _service().jobs.retry(job_id)
    return jsonify({"job": job_id, "state": "queued"})


def _patient_of(path: Path) -> str:
    resolver = current_app.config["EAGLE_OWNER"].get("resolver")
    if resolver is not None:
        return resolver.resolve(path).patient
    from eagle_index.ingest.patients import PatientResolver

    return PatientResolver().resolve(path).patient
