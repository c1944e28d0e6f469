"""Region search: tiles across the archive that look like a stored tile, a slide region or an uploaded image.

`POST /api/v1/search/tiles` with a JSON body for stored tiles and regions, or multipart (`file`
+ form fields) for an image. The answer is `service.regions`' result as it is:
{"query", "patients": [{"patient", "score", "tiles": [{"slide", "x_um", "y_um", "score", "slide_id", ...}]}],
"filters", "notes"}; pages build tile image URLs from slide_id and the coordinates.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from flask import Blueprint, jsonify, request

from web.api.params import bool_value, float_field, int_field, json_body, service
from web.api.search import _filters_from_body
from eagle_index.errors import EagleIndexError
from eagle_index.formats.suffixes import IMAGE_SUFFIXES
from eagle_index.limits import MAX_K
from web.errors import ApiError, page_words, status_of, user_named

bp = Blueprint("regions", __name__)

UPLOAD_STEM = "eagle-region-upload"  # the stored upload's name; messages name the user's file instead
QUERY_KEYS = ("patient", "tile", "slide", "slide_id", "x_um", "y_um", "box", "annotation")
GEOJSON = "geojson"  # "format": "geojson" (or ?format=geojson): the hits as a QuPath FeatureCollection


def _query(body: dict) -> dict:
    query = {key: body[key] for key in QUERY_KEYS if body.get(key) is not None}
    for key in ("patient", "slide"):
        if key in query and not isinstance(query[key], (str, int)) or isinstance(query.get(key), bool):
            raise ApiError(400, f"{key} must be a string", field=key)
    for key in ("tile", "slide_id"):
        if key in query:
            query[key] = int_field(query, key, None, 1, 2**31 - 1)
    for key in ("x_um", "y_um"):
        if key in query:
            query[key] = float_field(query, key, None, 0.0, 1e7)
    if "box" in query:
        box = query["box"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise ApiError(400, "box must be [x_um, y_um, w_um, h_um]", field="box")
    if "annotation" in query and (isinstance(query["annotation"], bool) or not isinstance(query["annotation"], (str, int))):
        raise ApiError(400, "annotation must be an annotation id or name", field="annotation")
    if "slide_id" in query and "slide" in query:
        raise ApiError(400, "give slide or slide_id, not both", field="slide_id")
    if not query:
        raise ApiError(400, "give a query: patient + tile, slide (or slide_id) + x_um + y_um, slide + box, or an image file",
                       field="patient")
    return query


@bp.post("/search/tiles")
def search_tiles():
    """Region search; JSON: {patient, tile} | {slide|slide_id, x_um, y_um} | {slide|slide_id, box} |
    {slide|slide_id, annotation (id or name)}, plus k, per_patient, include_same_patient, filters, format
    (json | geojson: the hits as a QuPath FeatureCollection; also ?format=); multipart: file (+ mpp, k,
    per_patient, filters as JSON, format)."""
    svc = service()
    if request.files or (request.content_type or "").startswith("multipart/"):
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise ApiError(400, "an image file is required", field="file")
        suffix = Path(upload.filename).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise ApiError(400, f"images must be one of {', '.join(IMAGE_SUFFIXES)} (got {suffix or 'no extension'})", field="file")
        form = request.form
        k = int_field(form, "k", 20, 1, MAX_K)
        per_patient = int_field(form, "per_patient", 3, 1, MAX_K)
        mpp = float_field(form, "mpp", None, 0.01, 100.0)
        include = bool_value(form.get("include_same_patient"), "include_same_patient")
        try:
            filters = _filters_from_body({"filters": json.loads(form["filters"])} if form.get("filters") else {})
        except ValueError:
            raise ApiError(400, "filters must be a JSON object", field="filters") from None
        name = Path(upload.filename).name[:200]
        with tempfile.TemporaryDirectory(prefix="eagle-region-") as tmp:
            path = Path(tmp) / f"{UPLOAD_STEM}{suffix}"
            upload.save(path)
            try:
                result = svc.regions.search({}, k, per_patient, filters, include, image=path, mpp=mpp)
            except EagleIndexError as exc:  # name the user's file and the form's field, never the server's path or a CLI flag
                message = page_words(user_named(str(exc), path, name))
                field = "mpp" if "“µm per pixel”" in message else "file" if message.startswith(name) else None
                raise ApiError(status_of(exc), message, field=field) from None
        out = result.as_dict()
        out["query"]["image"] = name
        return _answer(out, _format(form.get("format")))
    body = json_body()
    fmt = _format(body.get("format"))
    k = int_field(body, "k", 20, 1, MAX_K)
    per_patient = int_field(body, "per_patient", 3, 1, MAX_K)
    include = bool_value(body.get("include_same_patient"), "include_same_patient")
    filters = _filters_from_body(body)
    result = svc.regions.search(_query(body), k, per_patient, filters, include)
    return _answer(result.as_dict(), fmt)


def _format(given) -> str:
    fmt = request.args.get("format") or given or "json"
    if fmt not in ("json", GEOJSON):
        raise ApiError(400, f"format must be json or geojson, got {str(fmt)[:20]!r}", field="format")
    return fmt


def _answer(out: dict, fmt: str):
    """The result as JSON, or its hits as a QuPath FeatureCollection (a download)."""
    if fmt != GEOJSON:
        return jsonify(out)
    from flask import Response

    from eagle_index.formats.geojson import dumps, hits_collection

    response = Response(dumps(hits_collection(out)), mimetype="application/geo+json")
    response.headers["Content-Disposition"] = 'attachment; filename="eagle-hits.geojson"'
    return response
