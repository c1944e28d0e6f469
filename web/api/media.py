"""Images: slide and patient thumbnails with the selected tile boxes, tile images, upload previews.

Parses the request and sends `service.media`'s PNG bytes with HTTP caching headers; the service
opens the files, selects the tiles and keeps the image cache (eagle_index/media.py).
"""

from __future__ import annotations

from flask import Blueprint, request, send_file

from eagle_index.media import THUMB_SIZES
from web.api.params import choice, float_arg, service
from web.errors import ApiError

bp = Blueprint("media", __name__)


def _size() -> int:
    raw = request.args.get("size", "512")
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, f"size must be an integer, got {raw!r}", field="size") from None
    if size not in THUMB_SIZES:
        raise ApiError(400, f"size must be one of {', '.join(map(str, THUMB_SIZES))}", field="size")
    return size


def _position() -> tuple[float, float]:
    x_um = float_arg("x_um", None, 0.0, 1e7)
    y_um = float_arg("y_um", None, 0.0, 1e7)
    if x_um is None or y_um is None:
        raise ApiError(400, "x_um and y_um are required", field="x_um" if x_um is None else "y_um")
    return x_um, y_um


def _png(data: bytes):
    import io

    return send_file(io.BytesIO(data), mimetype="image/png", max_age=300)


@bp.get("/slides/<int:slide_id>/thumbnail.png")
def slide_thumbnail(slide_id: int):
    """Thumbnail; boxes=selected (default) draws the tissue outline and the patient's selected tiles
    on this slide, boxes=none the bare image (pages overlay their own interactive boxes)."""
    size = _size()
    boxes = choice(request.args.get("boxes"), "boxes", ("selected", "none"), "selected")
    return _png(service().media.slide_thumbnail(slide_id, size, boxes=boxes == "selected"))


@bp.get("/patients/<patient>/thumbnail.png")
def patient_thumbnail(patient: str):
    """The patient's slide holding most of its selected tiles, with their boxes (404 without a slide file)."""
    return _png(service().media.patient_thumbnail(patient, _size()))


@bp.get("/slides/<int:slide_id>/tile.png")
def slide_tile(slide_id: int):
    """One tile the pipeline read (224 px at 2 µm/px), by its top-left µm coordinates."""
    x_um, y_um = _position()
    return _png(service().media.slide_tile(slide_id, x_um, y_um))


@bp.get("/uploads/<upload_id>/thumbnail.png")
def upload_thumbnail(upload_id: str):
    return _png(service().media.upload_thumbnail(upload_id, _size()))


@bp.get("/uploads/<upload_id>/tile.png")
def upload_tile(upload_id: str):
    x_um, y_um = _position()
    return _png(service().media.upload_tile(upload_id, x_um, y_um))
