"""The slide viewer: Deep Zoom descriptor and tiles, overlays, a patient's viewer slides, the compare view.

Only ids and enumerated values come from the request (`<int:...>` converters, a format among
jpeg/png); the service (`service.viewer`) finds the file through the catalog and answers ids and
coordinates; image URLs are added here (web/urls.py).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from web import urls
from web.api.params import int_arg, service
from web.errors import ApiError

bp = Blueprint("viewer", __name__)

TILE_MAX_AGE = 86400  # tiles never change under an ETag (it names the file's size and mtime)


def _conditional(body, mimetype: str, etag: str, max_age: int) -> Response:
    if etag in request.headers.get("If-None-Match", ""):
        response = Response(status=304)
    else:
        response = Response(body, mimetype=mimetype)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = f"private, max-age={max_age}"
    return response


@bp.get("/slides/<int:slide_id>/dzi")
def dzi(slide_id: int):
    """The Deep Zoom descriptor (XML) of a catalogued slide; tiles at tiles/{level}/{col}_{row}.{format}."""
    fmt = request.args.get("format", "jpeg")
    if fmt not in ("jpeg", "png"):
        raise ApiError(400, f"format must be jpeg or png, got {fmt[:20]!r}", field="format")
    descriptor = service().viewer.dzi(slide_id, fmt)
    return _conditional(descriptor.xml, "application/xml", descriptor.etag, 300)


@bp.get("/slides/<int:slide_id>/tiles/<int:level>/<int:col>_<int:row>.<fmt>")
def tile(slide_id: int, level: int, col: int, row: int, fmt: str):
    """One Deep Zoom tile (out-of-range level/col/row or another format: 404)."""
    viewer = service().viewer
    if request.headers.get("If-None-Match"):
        etag = viewer.tile_etag(slide_id, level, col, row, fmt)
        if etag in request.headers["If-None-Match"]:
            return _conditional(b"", "application/octet-stream", etag, TILE_MAX_AGE)
    image = viewer.tile(slide_id, level, col, row, fmt)
    return _conditional(image.data, image.mimetype, image.etag, TILE_MAX_AGE)


@bp.get("/slides/<int:slide_id>/overlays")
def overlays(slide_id: int):
    """Deep Zoom geometry, every tissue tile (µm and level-0 px) with CHIEF attention, the selected tiles."""
    return jsonify(urls.with_overlay_urls(service().viewer.overlays(slide_id).as_dict()))


@bp.get("/patients/<patient>/viewer")
def patient_viewer(patient: str):
    """A patient's slides as the viewer can show them (or why not), and its selected tiles in rank order."""
    return jsonify(urls.with_viewer_urls(service().viewer.patient(patient).as_dict()))


@bp.get("/compare")
def compare():
    """Two patients side by side: their viewer slides and the explanation's matching tile pairs."""
    query = request.args.get("query", "").strip()
    hit = request.args.get("hit", "").strip()
    for name, value in (("query", query), ("hit", hit)):
        if not value:
            raise ApiError(400, f"{name} is required (a patient id)", field=name)
        if len(value) > 200:
            raise ApiError(400, f"{name} is longer than 200 characters", field=name)
    pairs = int_arg("pairs", 10, 1, 25)
    return jsonify(urls.with_compare_urls(service().viewer.compare(query, hit, pairs).as_dict()))
