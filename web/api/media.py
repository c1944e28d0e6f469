"""Images: slide and patient thumbnails with the selected tile boxes, tile images, upload previews."""

from __future__ import annotations

from flask import Blueprint, request, send_file

from web import media
from web.api.params import choice, float_arg, service
from web.errors import ApiError

bp = Blueprint("media", __name__)


def _size() -> int:
    raw = request.args.get("size", "512")
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, f"size must be an integer, got {raw!r}", field="size") from None
    if size not in media.THUMB_SIZES:
        raise ApiError(400, f"size must be one of {', '.join(map(str, media.THUMB_SIZES))}", field="size")
    return size


def _png(data: bytes):
    import io

    return send_file(io.BytesIO(data), mimetype="image/png", max_age=300)


@bp.get("/slides/<int:slide_id>/thumbnail.png")
def slide_thumbnail(slide_id: int):
    """Thumbnail; boxes=selected (default) draws the tissue outline and the patient's selected tiles
    on this slide, boxes=none the bare image (pages overlay their own interactive boxes)."""
    svc = service()
    size = _size()
    boxes = choice(request.args.get("boxes"), "boxes", ("selected", "none"), "selected")
    row, _ = svc.browse.slide(slide_id)
    tiles = None
    if boxes == "selected":
        tiles = media.patient_tiles(svc, row.patient_id, svc.browse.slides_of_patient(row.patient_id))
    return _png(media.slide_thumbnail(svc, row, size, tiles))


@bp.get("/patients/<patient>/thumbnail.png")
def patient_thumbnail(patient: str):
    """The patient's slide holding most of its selected tiles, with their boxes (404 without a slide file)."""
    from pathlib import Path

    from eagle_index.errors import NotFoundError

    svc = service()
    size = _size()
    pid = svc.browse.patient_id(patient)
    slides = [s for s in svc.browse.slides_of_patient(pid) if s.path and Path(s.path).is_file()]
    if not slides:
        raise NotFoundError(f"patient {patient!r} has no slide file on this server")
    tiles = media.patient_tiles(svc, pid, slides)
    best = max(slides, key=lambda s: (sum(t.slide_id == s.id for t in tiles), -s.id))
    return _png(media.slide_thumbnail(svc, best, size, tiles))


@bp.get("/slides/<int:slide_id>/tile.png")
def slide_tile(slide_id: int):
    """One tile the pipeline read (224 px at 2 µm/px), by its top-left µm coordinates."""
    svc = service()
    x_um = float_arg("x_um", None, 0.0, 1e7)
    y_um = float_arg("y_um", None, 0.0, 1e7)
    if x_um is None or y_um is None:
        raise ApiError(400, "x_um and y_um are required", field="x_um" if x_um is None else "y_um")
    row, _ = svc.browse.slide(slide_id)
    return _png(media.slide_tile(svc, row, x_um, y_um))


@bp.get("/uploads/<upload_id>/thumbnail.png")
def upload_thumbnail(upload_id: str):
    return _png(media.upload_thumbnail(service(), upload_id, _size()))


@bp.get("/uploads/<upload_id>/tile.png")
def upload_tile(upload_id: str):
    x_um = float_arg("x_um", None, 0.0, 1e7)
    y_um = float_arg("y_um", None, 0.0, 1e7)
    if x_um is None or y_um is None:
        raise ApiError(400, "x_um and y_um are required", field="x_um" if x_um is None else "y_um")
    return _png(media.upload_tile(service(), upload_id, x_um, y_um))
