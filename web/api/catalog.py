"""Patients, slides and labels: lists with filters and paging, details, label reads and writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flask import Blueprint, jsonify, request

from web import urls
from web.api.params import checked, choice, int_arg, json_body, label_args, page_args, service
from eagle_index.errors import EagleIndexError
from web.errors import ApiError, user_named

bp = Blueprint("catalog", __name__)


def _allowed_ids(svc) -> set[int] | None:
    from eagle_index.search import SearchFilters

    labels = label_args("label")
    cohorts = [c for c in request.args.getlist("cohort") if c]
    if not labels and not cohorts:
        return None
    return svc.searcher.allowed_ids(SearchFilters.build(labels=labels, cohorts=cohorts))


@bp.get("/patients")
def patients():
    """Patients whose id contains `q` (type-ahead: prefix matches first), filtered by label/cohort/kind."""
    svc = service()
    limit, offset = page_args(50, 1000)
    q = request.args.get("q", "").strip()[:200] or None
    kind = request.args.get("kind") or None
    return jsonify(svc.browse.list_patients(q, _allowed_ids(svc), kind, limit, offset))


@bp.get("/patients/<patient>")
def patient(patient: str):
    """A patient: labels, slides (with thumbnails), vectors, cohorts, and its selected tiles."""
    svc = service()
    pid = svc.browse.patient_id(patient)
    slides = svc.browse.slides_of_patient(pid)
    tiles = svc.media.selected_tiles(pid, slides)
    counts: dict[int, int] = {}
    for tile in tiles:
        if tile.slide_id is not None:
            counts[tile.slide_id] = counts.get(tile.slide_id, 0) + 1
    slide_items = []
    for row in slides:
        item = urls.with_slide_urls(svc.browse.slide_dict(row, patient))
        item["selected_tiles"] = counts.get(row.id, 0)
        slide_items.append(item)
    return jsonify({
        "patient": patient,
        "labels": svc.browse.labels_of([pid])[pid],
        "slides": slide_items,
        "vectors": svc.browse.vectors_of(pid),
        "cohorts": svc.browse.cohorts_of(pid),
        "tiles": [urls.with_selected_tile_url(t.selected_dict()) for t in tiles],
        "thumbnail_url": urls.patient_thumbnail(patient) if any(s["has_file"] for s in slide_items) else None,
    })


@bp.get("/patients/<patient>/labels")
def patient_labels(patient: str):
    svc = service()
    pid = svc.browse.patient_id(patient)
    return jsonify({"patient": patient, "labels": svc.browse.labels_of([pid])[pid]})


@bp.post("/patients/<patient>/labels")
def add_label(patient: str):
    """Add or replace one label of a patient: {"name": ..., "value": ...} (value null clears it)."""
    from eagle_index.identifiers import check_label_name, check_label_value

    body = json_body()
    name = body.get("name")
    if name is None or (isinstance(name, str) and not name.strip()):
        raise ApiError(400, "name is required", field="name")
    if not isinstance(name, str):
        raise ApiError(400, "name must be a string", field="name")
    name = checked(check_label_name, "name", name)  # the rule every label name follows (imports too)
    value = body.get("value")
    if isinstance(value, bool) or not (value is None or isinstance(value, (str, int, float))):
        raise ApiError(400, "value must be a string, a number or null", field="value")
    value = None if value is None or not str(value).strip() else checked(check_label_value, "value", str(value), name=name)
    return jsonify({"patient": patient, "labels": service().set_label(patient, name, value, source="web")})


@bp.get("/slides")
def slides():
    svc = service()
    limit, offset = page_args(50, 1000)
    patient = request.args.get("patient") or None
    pid = svc.browse.patient_id(patient) if patient else None
    status = choice(request.args.get("status"), "status", service().browse.SLIDE_STATES)
    q = request.args.get("q", "").strip()[:200] or None
    listed = svc.browse.list_slides(pid, status, q, limit, offset).as_dict()
    listed["items"] = [urls.with_slide_urls(item) for item in listed["items"]]
    return jsonify(listed)


@bp.get("/slides/<int:slide_id>")
def slide(slide_id: int):
    """A slide and its tiles: every tissue tile's coordinates and attention, and its top candidates."""
    svc = service()
    all_tiles = int_arg("all_tiles", 0, 0, 1)
    row, external = svc.browse.slide(slide_id)
    out = urls.with_slide_urls(svc.browse.slide_dict(row, external))
    out["candidates"] = []
    tiles = svc.media.slide_tiles(slide_id, all_tiles=bool(all_tiles))
    if tiles is not None:
        out["tile_um"] = tiles.tile_um
        out["candidates"] = [
            {**c.position_dict(), "tile_url": urls.tile_url(row.id, c.x_um, c.y_um) if out["has_file"] else None}
            for c in tiles.candidates
        ]
        if tiles.tiles is not None:
            out["tiles"] = [t.position_dict() for t in tiles.tiles]
    return jsonify(out)


@bp.get("/labels")
def labels():
    """Every label name with its values and how many patients have each."""
    return jsonify(service().browse.label_summary())


@bp.post("/labels")
def import_labels():
    """Upload a clinical table (multipart field `file`); stored under the data dir with a generated name."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ApiError(400, "a clinical table file is required", field="file")
    suffix = ".xlsx" if upload.filename.lower().endswith((".xlsx", ".xls")) else ".csv"
    svc = service()
    folder = svc.settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="labels-", suffix=suffix, dir=folder)
    os.close(fd)
    original = Path(upload.filename).name[:200] or "upload"
    try:
        upload.save(tmp)
        create = request.form.get("create_missing", "false").lower() in ("1", "true", "yes", "on")
        report = svc.import_labels(Path(tmp), create_missing=create)
    except EagleIndexError as exc:  # messages name the user's file, never the server's temp path
        raise type(exc)(user_named(str(exc), Path(tmp), original)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    data = report.as_dict()
    data["source"] = upload.filename
    data["notes"] = [user_named(note, Path(tmp), original).replace("--create-missing", "create_missing=true")
                     for note in data.get("notes", [])]
    return jsonify(data)
