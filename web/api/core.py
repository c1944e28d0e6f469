"""Health, counts, queue status, what the UI's menus offer, background tasks, the OpenAPI document."""

from __future__ import annotations

import os

from flask import Blueprint, current_app, jsonify

from web.api.params import service, tasks
from web.errors import ApiError

bp = Blueprint("core", __name__)


@bp.get("/health")
def health():
    owner = current_app.config["EAGLE_OWNER"]
    return jsonify({"ok": True, "pid": os.getpid(), "role": owner.get("role")})


@bp.get("/stats")
def stats():
    return jsonify(service().stats())


@bp.get("/status")
def status():
    return jsonify(service().status())


@bp.get("/meta")
def meta():
    """Vector sets, label names and values, cohorts, probe models and export formats (for forms)."""
    from eagle_index.cohorts import EXPORT_FORMATS
    from eagle_index.probing.models import MODELS

    svc = service()
    stats = svc.stats()
    return jsonify({
        "patients": stats["patients"],
        "vector_sets": stats["vector_sets"],
        "kinds": sorted({s["kind"] for s in stats["vector_sets"]}),
        "labels": svc.browse.label_summary(),
        "cohorts": [c["name"] for c in svc.cohorts.list()],
        "probes": [p["name"] for p in svc.probes.list()],
        "probe_models": list(MODELS),
        "export_formats": list(EXPORT_FORMATS),
        "top_k": svc.settings.eagle.top_k,
        "tile_um": svc.settings.tiling.tile_um,
        "token_required": bool(current_app.config.get("EAGLE_TOKEN")),
    })


@bp.get("/tasks/<task_id>")
def task(task_id: str):
    found = tasks().get(task_id)
    if found is None:
        raise ApiError(404, f"unknown task {task_id!r} (tasks are kept in memory until the server restarts)")
    return jsonify(found.as_dict())


@bp.get("/openapi.json")
def openapi():
    from web.openapi import document

    return jsonify(document())
