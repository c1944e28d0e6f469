"""Annotations of slides (issue 23): list, draw (create), edit, delete, QuPath GeoJSON import and export.

`<slide>` is a slide name, or a slide id (digits that name no slide: what the viewer's routes use).
An annotation object: {"id", "slide", "slide_id", "patient", "name", "class_name", "color": "#rrggbb",
"shape", "geometry" (GeoJSON, level-0 px), "bbox_px": [x0, y0, x1, y1], "bbox_um", "source",
"created_at", "updated_at"}. The service (`service.annotations`) does the work; bad input is a 400
naming the field (or, for GeoJSON, the file and the feature).
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request

from eagle_index.errors import InputError
from web.api.params import int_arg, json_body, service
from web.errors import ApiError

bp = Blueprint("annotations", __name__)

FIELDS = ("name", "class_name", "color", "geometry")


def _fields(body: dict, required_geometry: bool) -> dict:
    unknown = set(body) - {*FIELDS, "source"}
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(sorted(unknown))} (use {', '.join(FIELDS)})", field=sorted(unknown)[0])
    if required_geometry and body.get("geometry") is None:
        raise ApiError(400, "geometry is required (a GeoJSON geometry in level-0 pixels)", field="geometry")
    out = {k: body[k] for k in FIELDS if k in body}
    for key in ("name", "class_name", "color"):
        if out.get(key) is not None and not isinstance(out[key], (str, list)):
            raise ApiError(400, f"{key} must be a string", field=key)
    return out


def _as_field(exc: InputError, default: str) -> ApiError:
    message = str(exc)
    field = next((f for f in FIELDS if message.startswith(f)), default)
    return ApiError(400, message, field=field)


@bp.get("/slides/<slide>/annotations")
def of_slide(slide: str):
    """{"slide", "slide_id", "patient", "annotations": [...]} of one slide."""
    return jsonify(service().annotations.of_slide(slide))


@bp.post("/slides/<slide>/annotations")
def create(slide: str):
    """Draw one: {geometry, name?, class_name?, color?} -> 201 + the annotation."""
    fields = _fields(json_body(), required_geometry=True)
    source = json_body().get("source") or "viewer"
    if not isinstance(source, str):
        raise ApiError(400, "source must be a string", field="source")
    try:
        made = service().annotations.create(slide, fields.pop("geometry"), source=source, **fields)
    except InputError as exc:
        raise _as_field(exc, "geometry") from None
    return jsonify(made), 201


@bp.post("/slides/<slide>/annotations/import")
def import_geojson(slide: str):
    """QuPath GeoJSON (multipart `file`, or the GeoJSON as the JSON body) -> {"imported": n, "annotations": [...]}."""
    svc = service()
    if request.files or (request.mimetype or "").startswith("multipart/"):
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise ApiError(400, "a GeoJSON file is required", field="file")
        name = upload.filename.replace("\\", "/").rsplit("/", 1)[-1][:200]
        try:
            return jsonify(svc.annotations.import_geojson(slide, data=upload.read(), source=name))
        except InputError as exc:
            raise ApiError(400, str(exc), field="file") from None
    raw = request.get_data(cache=True)
    if not raw:
        raise ApiError(400, "send the GeoJSON as the body or as the multipart field `file`", field="file")
    try:
        return jsonify(svc.annotations.import_geojson(slide, data=raw, source="GeoJSON body"))
    except InputError as exc:
        raise ApiError(400, str(exc), field="body") from None


@bp.get("/slides/<slide>/annotations.geojson")
def export_geojson(slide: str):
    """The slide's annotations as a QuPath FeatureCollection (level-0 px), as a download."""
    svc = service()
    collection = svc.annotations.export_geojson(slide)
    name = svc.annotations.slide(slide).name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[:120] or "slide"
    response = Response(json.dumps(collection, indent=1, ensure_ascii=False), mimetype="application/geo+json")
    response.headers["Content-Disposition"] = f'attachment; filename="{safe}.geojson"'
    return response


@bp.get("/annotations")
def listing():
    """Every annotation (or one slide's: ?slide=NAME_OR_ID), by id."""
    slide = request.args.get("slide") or None
    limit = int_arg("limit", None, 1, 1_000_000)
    return jsonify({"annotations": service().annotations.list(slide, limit)})


@bp.get("/annotations/<int:annotation_id>")
def get(annotation_id: int):
    return jsonify(service().annotations.get(annotation_id))


@bp.put("/annotations/<int:annotation_id>")
def update(annotation_id: int):
    """Change any of name, class_name, color, geometry -> the annotation."""
    fields = _fields(json_body(), required_geometry=False)
    if not fields:
        raise ApiError(400, f"give one of {', '.join(FIELDS)}", field="body")
    try:
        return jsonify(service().annotations.update(annotation_id, **fields))
    except InputError as exc:
        raise _as_field(exc, "body") from None


@bp.delete("/annotations/<int:annotation_id>")
def delete(annotation_id: int):
    service().annotations.delete([annotation_id])
    return jsonify({"deleted": annotation_id})


@bp.post("/annotations/delete")
def delete_many():
    """{"ids": [...]} -> {"deleted": [...]}: all of them or none (an unknown id is a 404 naming it)."""
    ids = json_body().get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ApiError(400, "ids must be a non-empty list of annotation ids", field="ids")
    return jsonify({"deleted": service().annotations.delete(ids)})
