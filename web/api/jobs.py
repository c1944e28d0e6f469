"""The ingestion queue: list jobs, queue server-side slide files (inside the configured roots only), retry."""

from __future__ import annotations

import stat
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from web.api.params import identifier_field, int_arg, json_body, service
from web.errors import ApiError

bp = Blueprint("jobs", __name__)

STATES = ("queued", "running", "done", "failed", "skipped")


@bp.get("/jobs")
def jobs():
    state = request.args.get("state")
    if state is not None and state not in STATES:
        raise ApiError(400, f"unknown state {state!r}", field="state")
    return jsonify(service().jobs.jobs(state=state, limit=int_arg("limit", 100, 1, 10000)))


def _roots() -> list[Path]:
    return [Path(r).resolve() for r in current_app.config["EAGLE_OWNER"].get("roots", [])]


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _resolve_inside(raw: str, roots: list[Path]) -> Path:
    """The real path (symlinks and '..' resolved) of a requested file, if it lies inside a root."""
    where = ", ".join(map(str, roots)) or "none configured: start the server with --watch"
    if not raw or len(raw) > 4096 or "\x00" in raw:
        raise ApiError(400, "each path must be a non-empty file path", field="paths")
    try:
        path = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        raise ApiError(400, f"{raw}: not a usable path", field="paths") from None
    if not Path(raw).is_absolute() or not inside(path, roots):
        raise ApiError(400, f"{raw} is outside the folders this server ingests from ({where})", field="paths")
    try:
        mode = path.stat().st_mode
    except OSError:
        raise ApiError(400, f"{raw}: file not found", field="paths") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO would block this thread in open() for ever
        raise ApiError(400, f"{raw}: not a regular file (nor a folder)", field="paths")
    return path


@bp.post("/jobs")
def enqueue():
    """Queue slide files that lie under the server's watched/ingest folders (never elsewhere).

    Paths must be absolute; they are resolved (symlinks, '..') before the check, and every
    slide found inside a named folder is checked again, so a link cannot lead outside.
    """
    from eagle_index.fingerprint import slide_fingerprint
    from eagle_index.ingest.steps import find_slides

    body = json_body()
    paths = body.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ApiError(400, "paths must be a non-empty list of strings", field="paths")
    if body.get("patient") is not None and (not isinstance(body["patient"], str) or not body["patient"].strip()):
        raise ApiError(400, "patient must be a non-empty string", field="patient")
    patient = identifier_field(body, "patient", "patient")
    roots = _roots()
    resolved = [_resolve_inside(raw, roots) for raw in paths]
    accepted, refused = [], []
    for path in resolved:
        for slide in find_slides([path]):
            real = slide.resolve()
            if not inside(real, roots):
                refused.append({"file": str(slide), "reason": "links outside the ingest folders"})
                continue
            owner = patient or _patient_of(real)
            if patient is None:  # an id taken from the file name obeys the same rule: this file is refused, with why
                from eagle_index.errors import InputError
                from eagle_index.identifiers import check_identifier

                try:
                    owner = check_identifier("patient id", owner, where=f"{real.name} (patient id from the file name)")
                except InputError as exc:
                    refused.append({"file": str(slide), "reason": f"{exc}; give the patient in the request or a slide table"})
                    continue
            state, job_id = service().jobs.enqueue(slide_fingerprint(real), str(real), owner)
            accepted.append({"file": str(real), "state": state, "job": job_id})
    return jsonify({"jobs": accepted, "refused": refused}), 202


@bp.post("/jobs/<int:job_id>/retry")
def retry(job_id: int):
    """A failed job back to the queue."""
    svc = service()
    state = svc.browse.job_state(job_id)
    if state is None:
        raise ApiError(404, f"unknown job {job_id}")
    if state != "failed":
        raise ApiError(409, f"job {job_id} is {state}; only failed jobs can be re-queued")
    svc.jobs.retry(job_id)
    return jsonify({"job": job_id, "state": "queued"})


def _patient_of(path: Path) -> str:
    resolver = current_app.config["EAGLE_OWNER"].get("resolver")
    if resolver is not None:
        return resolver.resolve(path).patient
    from eagle_index.ingest.patients import PatientResolver

    return PatientResolver().resolve(path).patient
