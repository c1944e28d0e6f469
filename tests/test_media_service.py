"""`service.media` and the split of issue 22 item 6: services open slides and artifacts and answer ids and
coordinates; the web layer alone makes URLs (web/urls.py), with the same text as before."""

from __future__ import annotations

import io

import pytest

from test_web_fixtures import PNG, api_env


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from api_env(tmp_path_factory, "media-service")


def test_viewer_and_listing_answer_ids_and_the_web_adds_urls(env):
    from web import urls

    svc, client = env["service"], env["client"]
    shown = svc.viewer.patient("CASE-001").as_dict()
    assert shown["selected"] and all("tile_url" not in box for box in shown["selected"])
    assert all(box["has_file"] and box["slide_id"] is not None for box in shown["selected"])
    answered = client.get("/api/v1/patients/CASE-001/viewer").get_json()
    assert [b["tile_url"] for b in answered["selected"]] == [
        f"/api/v1/slides/{b['slide_id']}/tile.png?x_um={b['x_um']:.3f}&y_um={b['y_um']:.3f}" for b in shown["selected"]]
    assert all("has_file" not in b for b in answered["selected"])
    slide_id = shown["slides"][0]["id"]
    assert "tiles_url" not in svc.viewer.overlays(slide_id).as_dict()["dzi"]
    overlays = client.get(f"/api/v1/slides/{slide_id}/overlays").get_json()
    assert overlays["dzi"]["tiles_url"] == f"/api/v1/slides/{slide_id}/tiles/" == urls.dzi_tiles(slide_id)
    row, external = svc.browse.slide(slide_id)
    assert "thumbnail_url" not in svc.browse.slide_dict(row, external)
    assert client.get(f"/api/v1/slides/{slide_id}").get_json()["thumbnail_url"] == f"/api/v1/slides/{slide_id}/thumbnail.png"
    listed = client.get("/api/v1/slides?patient=CASE-001").get_json()["items"]
    assert [i["thumbnail_url"] for i in listed] == [f"/api/v1/slides/{i['id']}/thumbnail.png" for i in listed]


def test_media_is_the_one_selection_and_serves_what_the_api_sends(env):
    from PIL import Image

    from eagle_index.errors import InputError, NotFoundError

    svc, client = env["service"], env["client"]
    pid = svc.browse.patient_id("CASE-001")
    tiles = svc.media.selected_tiles(pid)
    viewer = svc.viewer.patient("CASE-001").selected
    assert [(t.slide_id, t.x_um, t.y_um) for t in tiles] == [(b.slide_id, b.x_um, b.y_um) for b in viewer]
    assert [t["slide_id"] for t in client.get("/api/v1/patients/CASE-001").get_json()["tiles"]] == [t.slide_id for t in tiles]
    first = tiles[0]
    png = svc.media.slide_tile(first.slide_id, first.x_um, first.y_um)
    assert png.startswith(PNG) and Image.open(io.BytesIO(png)).size == (224, 224)
    assert client.get(f"/api/v1/slides/{first.slide_id}/tile.png?x_um={first.x_um}&y_um={first.y_um}").data == png
    described = svc.media.slide_tiles(first.slide_id, all_tiles=True)
    detail = client.get(f"/api/v1/slides/{first.slide_id}?all_tiles=1").get_json()
    assert detail["tile_um"] == described.tile_um and len(detail["tiles"]) == len(described.tiles)
    assert [(c["rank"], c["x_um"], c["y_um"]) for c in detail["candidates"]] == [(c.slide_rank, c.x_um, c.y_um) for c in described.candidates]
    assert svc.media.slide_thumbnail(first.slide_id, 160).startswith(PNG)
    assert svc.media.patient_thumbnail("CASE-001", 160).startswith(PNG)
    with pytest.raises(InputError, match="size must be one of"):
        svc.media.slide_thumbnail(first.slide_id, 4000)
    with pytest.raises(NotFoundError, match="unknown upload id"):
        svc.media.upload_thumbnail("../../etc/passwd", 160)
    imported = svc.browse.patient_id("IMP-001")
    assert svc.media.selected_tiles(imported) == []
    with pytest.raises(NotFoundError, match="no slide file"):
        svc.media.patient_thumbnail("IMP-001", 160)
