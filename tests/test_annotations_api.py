"""The annotations API (issue 23) as the viewer uses it: list, draw, edit, delete, QuPath GeoJSON import and
export, region search by annotation with GeoJSON hits, the in_annotation filter, and the usual rules
(400 naming the field or the feature, 404, CSRF for browsers). A real service (tiny models, slides
read with OpenSlide, DuckDB, FAISS) behind the Flask app."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from eagle_index.config import Settings
from eagle_index.formats import geojson
from eagle_index.service import EagleService
from slide_fixtures import write_pyramidal_tiff
from test_annotations import QUPATH
from test_web_fixtures import error_of

TILE = 448.0
MPP = 2.0
KEYS = {"id", "slide", "name", "class_name", "color", "geometry", "bbox_px", "source", "created_at", "updated_at"}


def _slide(folder: Path, name: str, seed: int, texture: str) -> Path:
    return write_pyramidal_tiff(folder / f"{name}.tiff", mpp=MPP, size_um=(4 * TILE, 3 * TILE),
                                tissue_boxes_um=[(0.0, 0.0, 4 * TILE, 3 * TILE)], seed=seed, texture=texture).path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from web import create_app

    folder = tmp_path_factory.mktemp("annotation-api-slides")
    service = EagleService(Settings(data_dir=tmp_path_factory.mktemp("annotation-api-data"), models="tiny", device="cpu"))
    for name, patient, seed, texture in (("PA-A1", "PA", 1, "cells"), ("PB-B1", "PB", 2, "fat"), ("PC-C1", "PC", 3, "cells")):
        assert not service.ingest([_slide(folder, name, seed, texture)], patient=patient).failed
    app = create_app(service=service, owner={"role": "serve"})
    yield {"app": app, "client": app.test_client(), "service": service}
    service.close()


@pytest.fixture
def client(env):
    return env["client"]


def test_draw_list_edit_delete(client):
    rect = geojson.rectangle(0, 0, 448, 448)
    made = client.post("/api/v1/slides/PA-A1/annotations", json={"name": "box", "class_name": "Tumor", "color": "#FF0000",
                                                                  "geometry": rect})
    assert made.status_code == 201, made.get_data(as_text=True)
    ann = made.get_json()
    assert set(ann) >= KEYS and ann["color"] == "#ff0000" and ann["geometry"] == rect and ann["bbox_px"] == [0, 0, 448, 448]
    assert ann["source"] == "viewer" and ann["slide"] == "PA-A1" and ann["shape"] == "rectangle"
    listed = client.get("/api/v1/slides/PA-A1/annotations").get_json()
    assert listed["slide"] == "PA-A1" and listed["annotations"] == [ann]
    by_id = client.get(f"/api/v1/slides/{ann['slide_id']}/annotations").get_json()  # the viewer addresses slides by id
    assert by_id == listed
    edited = client.put(f"/api/v1/annotations/{ann['id']}", json={"name": "renamed", "geometry": geojson.rectangle(10, 10, 500, 460)})
    assert edited.status_code == 200 and edited.get_json()["name"] == "renamed" and edited.get_json()["bbox_px"] == [10, 10, 510, 470]
    assert edited.get_json()["class_name"] == "Tumor"  # fields not sent are kept
    cleared = client.put(f"/api/v1/annotations/{ann['id']}", json={"class_name": None}).get_json()
    assert cleared["class_name"] is None and cleared["name"] == "renamed"
    assert client.get(f"/api/v1/annotations/{ann['id']}").get_json() == cleared
    assert client.get("/api/v1/annotations?slide=PA-A1").get_json()["annotations"] == [cleared]
    assert client.delete(f"/api/v1/annotations/{ann['id']}").get_json() == {"deleted": ann["id"]}
    error_of(client.delete(f"/api/v1/annotations/{ann['id']}"), 404)
    assert client.get("/api/v1/slides/PA-A1/annotations").get_json()["annotations"] == []


def test_bad_input_names_the_field(client):
    assert "geometry is required" in error_of(client.post("/api/v1/slides/PA-A1/annotations", json={"name": "x"}), 400, "geometry")
    message = error_of(client.post("/api/v1/slides/PA-A1/annotations",
                                   json={"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 5]]]}}),
                       400, "geometry")
    assert "not closed" in message
    error_of(client.post("/api/v1/slides/PA-A1/annotations", json={"geometry": geojson.rectangle(0, 0, 9, 9), "color": "blue"}),
             400, "color")
    error_of(client.post("/api/v1/slides/PA-A1/annotations", json={"geometry": geojson.rectangle(0, 0, 9, 9), "colour": "#fff"}),
             400, "colour")
    assert "unknown slide 'nope'" in error_of(client.get("/api/v1/slides/nope/annotations"), 404)
    error_of(client.put("/api/v1/annotations/424242", json={"name": "x"}), 404)
    error_of(client.put("/api/v1/annotations/1", json={}), 400, "body")
    error_of(client.post("/api/v1/annotations/delete", json={"ids": "1"}), 400, "ids")


def test_import_multipart_and_json_body_then_export(client):
    data = json.dumps(QUPATH).encode()
    done = client.post("/api/v1/slides/PB-B1/annotations/import", data={"file": (io.BytesIO(data), "from-qupath.geojson")},
                       content_type="multipart/form-data")
    assert done.status_code == 200, done.get_data(as_text=True)
    body = done.get_json()
    assert body["imported"] == 5 and len(body["annotations"]) == 5 and set(body["annotations"][0]) >= KEYS
    assert {a["source"] for a in body["annotations"]} == {"from-qupath.geojson"}
    export = client.get("/api/v1/slides/PB-B1/annotations.geojson")
    assert export.status_code == 200 and export.mimetype == "application/geo+json"
    assert export.headers["Content-Disposition"] == 'attachment; filename="PB-B1.geojson"'
    assert json.loads(export.get_data()) == QUPATH
    # the bare feature list as a JSON body
    bare = client.post("/api/v1/slides/PC-C1/annotations/import", json=QUPATH["features"][:2])
    assert bare.status_code == 200 and bare.get_json()["imported"] == 2
    assert json.loads(client.get("/api/v1/slides/PC-C1/annotations.geojson").get_data())["features"] == QUPATH["features"][:2]
    ids = [a["id"] for a in bare.get_json()["annotations"]] + [a["id"] for a in body["annotations"]]
    assert client.post("/api/v1/annotations/delete", json={"ids": ids}).get_json() == {"deleted": ids}
    # malformed: one message naming the file and the feature; nothing stored
    broken = copy_with(QUPATH, 1, {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 2]]]})
    message = error_of(client.post("/api/v1/slides/PB-B1/annotations/import",
                                   data={"file": (io.BytesIO(json.dumps(broken).encode()), "bad.geojson")},
                                   content_type="multipart/form-data"), 400, "file")
    assert message.startswith("bad.geojson: features[1] ('ring with a hole'): Polygon ring 0 (outer): not closed")
    assert "features[0]" in error_of(client.post("/api/v1/slides/PB-B1/annotations/import", json=[{"type": "Feature"}]), 400, "body")
    error_of(client.post("/api/v1/slides/PB-B1/annotations/import", data=b"{not json", content_type="application/json"), 400, "body")
    assert client.get("/api/v1/slides/PB-B1/annotations").get_json()["annotations"] == []


def copy_with(collection: dict, index: int, geometry: dict) -> dict:
    out = json.loads(json.dumps(collection))
    out["features"][index]["geometry"] = geometry
    return out


def test_search_tiles_by_annotation_and_hits_as_geojson(client):
    rect = geojson.rectangle(0, 0, 2 * TILE / MPP, 2 * TILE / MPP)
    ann = client.post("/api/v1/slides/PA-A1/annotations", json={"name": "query", "geometry": rect}).get_json()
    boxed = client.post("/api/v1/search/tiles", json={"slide": "PA-A1", "box": [0, 0, 2 * TILE, 2 * TILE], "k": 6})
    for ref in (ann["id"], "query"):
        by_annotation = client.post("/api/v1/search/tiles", json={"slide": "PA-A1", "annotation": ref, "k": 6})
        assert by_annotation.status_code == 200, by_annotation.get_data(as_text=True)
        assert by_annotation.get_json()["patients"] == boxed.get_json()["patients"]
    by_slide_id = client.post("/api/v1/search/tiles", json={"slide_id": ann["slide_id"], "annotation": ann["id"], "k": 6})
    assert by_slide_id.get_json()["patients"] == boxed.get_json()["patients"]
    for response in (client.post("/api/v1/search/tiles", json={"slide": "PA-A1", "annotation": ann["id"], "k": 6, "format": "geojson"}),
                     client.post("/api/v1/search/tiles?format=geojson", json={"slide": "PA-A1", "annotation": ann["id"], "k": 6})):
        assert response.status_code == 200 and response.mimetype == "application/geo+json"
        assert response.headers["Content-Disposition"].startswith("attachment")
        hits = json.loads(response.get_data())
        assert hits == geojson.hits_collection(boxed.get_json())
        assert hits["type"] == "FeatureCollection" and len(hits["features"]) == 6
        assert {f["properties"]["classification"]["name"] for f in hits["features"]} == {"eagle-hit"}
    on_pb = sum(f["properties"]["slide"] == "PB-B1" for f in hits["features"])
    again = client.post("/api/v1/slides/PB-B1/annotations/import", json=hits)  # this slide's hits; the others are reported
    assert on_pb and again.get_json()["imported"] == on_pb and len(again.get_json()["skipped"]) == 6 - on_pb
    client.post("/api/v1/annotations/delete", json={"ids": [a["id"] for a in again.get_json()["annotations"]] + [ann["id"]]})
    error_of(client.post("/api/v1/search/tiles", json={"slide": "PA-A1", "annotation": 99999}), 404)
    error_of(client.post("/api/v1/search/tiles", json={"slide": "PA-A1", "annotation": True}), 400, "annotation")
    error_of(client.post("/api/v1/search/tiles", json={"slide": "PA-A1", "box": [0, 0, 900, 900], "format": "kml"}), 400, "format")


def test_in_annotation_filter_in_search(client, env):
    from eagle_index.store import tiles_repo

    catalog = env["service"].catalog
    pb = catalog.patient_ids(["PB"])["PB"]
    first = next(r for r in tiles_repo.stored_patient_tiles(catalog, pb) if r.patient_rank == 1)
    ann = client.post("/api/v1/slides/PB-B1/annotations", json={
        "class_name": "Tumour", "geometry": geojson.rectangle(first.x_um / MPP, first.y_um / MPP, 224, 224)}).get_json()
    posted = client.post("/api/v1/search", json={"patient": "PA", "k": 5, "filters": {"in_annotation": ["tumour"]}})
    assert posted.status_code == 200 and [h["patient"] for h in posted.get_json()["hits"]] == ["PB"]
    got = client.get("/api/v1/search?patient=PA&k=5&in_annotation=Tumour").get_json()
    assert [h["patient"] for h in got["hits"]] == ["PB"]
    assert "no annotations of class 'necrosis'" in error_of(
        client.post("/api/v1/search", json={"patient": "PA", "filters": {"in_annotation": ["necrosis"]}}), 404)
    error_of(client.post("/api/v1/search", json={"patient": "PA", "filters": {"in_annotation": [3]}}), 400, "filters")
    client.delete(f"/api/v1/annotations/{ann['id']}")


def test_browser_writes_need_the_csrf_token(client):
    rect = geojson.rectangle(0, 0, 300, 300)
    refused = client.post("/api/v1/slides/PA-A1/annotations", json={"geometry": rect}, headers={"Origin": "http://localhost"})
    error_of(refused, 403, "csrf_token")
    with client.session_transaction() as session:
        session["csrf"] = "t0ken"
    made = client.post("/api/v1/slides/PA-A1/annotations", json={"geometry": rect},
                       headers={"Origin": "http://localhost", "X-CSRF-Token": "t0ken"})
    assert made.status_code == 201
    error_of(client.delete(f"/api/v1/annotations/{made.get_json()['id']}", headers={"Origin": "http://localhost"}), 403)
    assert client.delete(f"/api/v1/annotations/{made.get_json()['id']}",
                         headers={"Origin": "http://localhost", "X-CSRF-Token": "t0ken"}).status_code == 200
