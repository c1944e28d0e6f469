"""The ingestion queue: list jobs, queue server-side slide files (inside the configured roots only), retry."""

from __future__ import annotations

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


@bp.post("/jobs")
def enqueue():
    """Queue slide files that lie under the server's watched/ingest folders (never elsewhere).

    Paths must be absolute; the service (`service.enqueue`, eagle_index/ingest/enqueue.py) resolves
    them (symlinks, '..') before the check and checks every slide found inside a named folder again,
    so a link cannot lead outside.
    """
    from eagle_index.ingest.enqueue import PathRefused

    body = json_body()
    paths = body.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ApiError(400, "paths must be a non-empty list of strings", field="paths")
    if body.get("patient") is not None and (not isinstance(body["patient"], str) or not body["patient"].strip()):
        raise ApiError(400, "patient must be a non-empty string", field="patient")
    patient = identifier_field(body, "patient", "patient")
    try:
        answer = service().enqueue(paths, patient, roots=_roots(), resolver=current_app.config["EAGLE_OWNER"].get("resolver"))
    except PathRefused as exc:
        raise ApiError(400, str(exc), field="paths") from None
    return jsonify(answer), 202


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

