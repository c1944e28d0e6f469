"""The API's image and tile URLs: services return ids and coordinates, `web/` alone makes URLs (issue 22 item 6).

Each helper adds a URL to a fresh dict the blueprint is about to render (a service's `as_dict()`),
under the same key and with the same text as before the URLs moved up from the services.
"""

from __future__ import annotations

API = "/api/v1"


def slide_thumbnail(slide_id: int) -> str:
    return f"{API}/slides/{slide_id}/thumbnail.png"


def patient_thumbnail(patient: str) -> str:
    return f"{API}/patients/{patient}/thumbnail.png"


def tile_url(slide_id: int, x_um: float, y_um: float) -> str:
    """A stored tile's image: the slide id and the tile's top-left µm (3 decimals: the tile is found within 1 µm)."""
    return f"{API}/slides/{slide_id}/tile.png?x_um={x_um:.3f}&y_um={y_um:.3f}"


def upload_thumbnail(upload_id: str) -> str:
    return f"{API}/uploads/{upload_id}/thumbnail.png"


def upload_tile(upload_id: str, x_um: float, y_um: float) -> str:
    return f"{API}/uploads/{upload_id}/tile.png?x_um={x_um:.3f}&y_um={y_um:.3f}"


def dzi_tiles(slide_id: int) -> str:
    """The Deep Zoom tile folder of a slide (the viewer appends {level}/{col}_{row}.{format})."""
    return f"{API}/slides/{slide_id}/tiles/"


def task(task_id: str) -> str:
    return f"{API}/tasks/{task_id}"


# -- URLs added to rendered service results ----------------------------------------------------------
def with_slide_urls(item: dict) -> dict:
    """A listed slide (`service.browse.slide_dict`): its thumbnail when the file is on this server."""
    item["thumbnail_url"] = slide_thumbnail(item["id"]) if item.get("has_file") else None
    return item


def with_selected_tile_url(tile: dict) -> dict:
    """A patient's selected tile (`service.media.selected_tiles`, `Tile.selected_dict`): its image when it lies in a catalogued slide."""
    tile["tile_url"] = tile_url(tile["slide_id"], tile["x_um"], tile["y_um"]) if tile.get("slide_id") is not None else None
    return tile


def with_box_url(box: dict) -> dict:
    """A viewer tile box (`Tile.box_dict`): `has_file` becomes its image URL (None without the slide's file)."""
    has_file = box.pop("has_file", False)
    box["tile_url"] = tile_url(box["slide_id"], box["x_um"], box["y_um"]) if has_file and box.get("slide_id") is not None else None
    return box


def with_dzi_urls(dzi: dict) -> dict:
    dzi["tiles_url"] = dzi_tiles(dzi["slide_id"])
    return dzi


def with_viewer_urls(patient: dict) -> dict:
    """A `viewer.PatientViewer` as a dict: its selected tiles' images."""
    for box in patient.get("selected") or ():
        with_box_url(box)
    return patient


def with_overlay_urls(overlays: dict) -> dict:
    """A `viewer.SlideOverlays` as a dict: the Deep Zoom tile folder and the selected tiles' images."""
    with_dzi_urls(overlays["dzi"])
    for box in overlays.get("selected") or ():
        with_box_url(box)
    return overlays


def with_compare_urls(view: dict) -> dict:
    """A `viewer.CompareView` as a dict: both patients' tiles and the pairs' tiles."""
    with_viewer_urls(view["query"])
    with_viewer_urls(view["hit"])
    for pair in view.get("pairs") or ():
        with_box_url(pair["query"])
        with_box_url(pair["hit"])
    return view
