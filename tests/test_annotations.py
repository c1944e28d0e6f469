"""Annotations (issue 23): QuPath GeoJSON in and out, search by annotation, the in-annotation filter,
annotations across re-ingest and slide deletion, and the `annotations` / `search-tiles` commands
(offline and through a running daemon).

One tiny-model archive (real slides, OpenSlide, DuckDB, FAISS) is built once; tests run in file
order: format and service checks first, then the CLI (the service closed), then the CLI through a
daemon that owns the catalog.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eagle_index.config import Settings
from eagle_index.errors import InputError, NotFoundError
from eagle_index.formats import geojson
from eagle_index.service import EagleService
from slide_fixtures import write_pyramidal_tiff

TILE = 448.0  # µm; the slides are at 2 µm/px, so a tile is 224 level-0 px
MPP = 2.0
TILE_PX = TILE / MPP


def _slide(folder: Path, name: str, cols: int, rows: int, seed: int, texture: str = "cells") -> Path:
    return write_pyramidal_tiff(folder / f"{name}.tiff", mpp=MPP, size_um=(cols * TILE, rows * TILE),
                                tissue_boxes_um=[(0.0, 0.0, cols * TILE, rows * TILE)], seed=seed, texture=texture).path


# What QuPath 0.4/0.5 writes with "Export objects as GeoJSON" (FeatureCollection): ids, objectType,
# classification {name, color}, isLocked, measurements; coordinates in level-0 px, as floats.
QUPATH = {
    "type": "FeatureCollection",
    "features": [
        {"type": "Feature", "id": "0f1c2a5e-7d1b-4a3c-9a8e-2b8f4d6c1a01",
         "geometry": {"type": "Polygon", "coordinates": [[[0.0, 0.0], [448.0, 0.0], [448.0, 224.0], [0.0, 224.0], [0.0, 0.0]]]},
         "properties": {"objectType": "annotation", "name": "R1", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "isLocked": False}},
        {"type": "Feature", "id": "0f1c2a5e-7d1b-4a3c-9a8e-2b8f4d6c1a02",
         "geometry": {"type": "Polygon", "coordinates": [
             [[10.5, 10.5], [600.25, 10.5], [600.25, 500.75], [10.5, 500.75], [10.5, 10.5]],
             [[200.0, 200.0], [300.0, 200.0], [300.0, 300.0], [200.0, 300.0], [200.0, 200.0]]]},
         "properties": {"objectType": "annotation", "name": "ring with a hole",
                        "classification": {"name": "Stroma", "color": [150, 200, 150]}, "isLocked": False}},
        {"type": "Feature", "id": "0f1c2a5e-7d1b-4a3c-9a8e-2b8f4d6c1a03",
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[0.0, 300.0], [100.0, 300.0], [50.0, 400.0], [0.0, 300.0]]],
             [[[500.0, 300.0], [650.0, 320.5], [600.0, 420.0], [500.0, 300.0]]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "id": "0f1c2a5e-7d1b-4a3c-9a8e-2b8f4d6c1a04",
         "geometry": {"type": "MultiPoint", "coordinates": [[12.0, 30.0], [40.0, 80.5]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Immune cells", "color": [160, 90, 160]}}},
        {"type": "Feature", "id": "0f1c2a5e-7d1b-4a3c-9a8e-2b8f4d6c1a05",
         "geometry": {"type": "Point", "coordinates": [333.0, 111.0]},
         "properties": {"objectType": "annotation", "name": "look here", "color": [0, 0, 255],
                        "measurements": {"Area µm^2": 0.0}}},
    ],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotation-slides")
    slides = {
        "A": _slide(folder, "PA-A1", 5, 4, 1),
        "B": _slide(folder, "PB-B1", 4, 3, 2, "fat"),
        "C": _slide(folder, "PC-C1", 4, 3, 3),
    }
    settings = Settings(data_dir=tmp_path_factory.mktemp("annotation-data"), models="tiny", device="cpu")
    service = EagleService(settings)
    for key, patient in (("A", "PA"), ("B", "PB"), ("C", "PC")):
        assert not service.ingest([slides[key]], patient=patient).failed
    state = {"service": service, "slides": slides, "settings": settings, "folder": folder}
    yield state
    if state["service"] is not None:
        state["service"].close()


def _exported(collection: dict) -> list[dict]:
    return collection["features"]


# -- the format --------------------------------------------------------------------------------------
def test_qupath_layout_parses_into_shapes_classes_and_colours():
    parsed = geojson.parse(copy.deepcopy(QUPATH), "slide.geojson")
    assert [f.shape for f in parsed] == ["rectangle", "polygon", "multipolygon", "multipoint", "point"]
    assert [f.class_name for f in parsed] == ["Tumor", "Stroma", "Tumor", "Immune cells", None]
    assert [f.color for f in parsed] == ["#c80000", "#96c896", "#c80000", "#a05aa0", "#0000ff"]
    assert [f.name for f in parsed] == ["R1", "ring with a hole", None, None, "look here"]
    # QuPath 0.2's packed colorRGB and the bare feature list it writes
    old = [{"type": "Feature", "geometry": QUPATH["features"][0]["geometry"],
            "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, "isLocked": False}}]
    (f,) = geojson.parse(old, "old.json")
    assert (f.class_name, f.color) == ("Tumor", "#c80000")
    assert geojson.export_properties(f.properties, f.name, f.class_name, f.color) == old[0]["properties"]


def test_polygon_with_hole_and_multipolygon_contain_the_right_points():
    ring = QUPATH["features"][1]["geometry"]
    inside = geojson.contains(ring, [50, 250, 599, 700, 11], [50, 250, 500, 50, 10])
    assert inside.tolist() == [True, False, True, False, False]  # (250, 250) is in the hole
    multi = QUPATH["features"][2]["geometry"]
    assert geojson.contains(multi, [50, 580, 300], [330, 350, 350]).tolist() == [True, True, False]
    assert not geojson.contains(QUPATH["features"][4]["geometry"], [333], [111]).any()  # a point holds no area


BAD = [
    ("not json", b"{\"type\": \"FeatureCollection\", \"features\": [", "not valid JSON (line 1"),
    ("open ring", {"type": "FeatureCollection", "features": [
        QUPATH["features"][0],
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 9]]]},
         "properties": {"name": "T7"}}]}, "features[1] ('T7'): Polygon ring 0 (outer): not closed"),
    ("no geometry", [QUPATH["features"][0], {"type": "Feature", "geometry": None, "properties": {"name": "empty"}}],
     "features[1] ('empty'): has no geometry object"),
    ("bad colour", [{"type": "Feature", "geometry": QUPATH["features"][0]["geometry"],
                     "properties": {"name": "Z", "classification": {"name": "Tumor", "color": "red"}}}],
     "features[0] ('Z'): properties.classification.color must be [r, g, b]"),
    ("nan", b'[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [NaN, 1]}, "properties": {}}]',
     "features[0]: Point: coordinates must be finite numbers"),
    ("collection", [{"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": []}, "properties": {}}],
     "features[0]: GeometryCollection is not supported"),
    ("hole too short", [{"type": "Feature", "properties": {"name": "H"}, "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [9, 0], [9, 9], [0, 9], [0, 0]], [[1, 1], [2, 1], [1, 1]]]}}],
     "features[0] ('H'): Polygon ring 1 (hole): needs at least 4 positions, has 3"),
    ("no features", {"type": "Polygon", "coordinates": []}, "a bare Polygon geometry, not a Feature"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_malformed_geojson_is_one_error_naming_the_file_and_feature(case, world, tmp_path):
    _, content, expected = case
    path = tmp_path / "bad.geojson"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    service = world["service"]
    before = service.annotations.list("PC-C1")
    with pytest.raises(InputError) as info:
        service.annotations.import_geojson("PC-C1", path=path)
    message = str(info.value)
    assert message.startswith("bad.geojson: ") and expected in message and "\n" not in message, message
    assert service.annotations.list("PC-C1") == before  # all or nothing


# -- round trip ---------------------------------------------------------------------------------------
def test_qupath_geojson_imports_and_exports_back_identically(world, tmp_path):
    service = world["service"]
    path = tmp_path / "PA-A1.geojson"
    path.write_text(json.dumps(QUPATH, indent=2))
    out = service.annotations.import_geojson("PA-A1", path=path)
    assert out["imported"] == 5 and out["slide"] == "PA-A1"
    first = out["annotations"][0]
    assert first["shape"] == "rectangle" and first["bbox_px"] == [0.0, 0.0, 448.0, 224.0]
    assert first["bbox_um"] == [0.0, 0.0, 896.0, 448.0] and first["color"] == "#c80000" and first["source"] == "PA-A1.geojson"
    exported = service.annotations.export_geojson("PA-A1")
    assert exported == QUPATH  # geometry, ids and properties exactly as QuPath wrote them
    # the bare feature list QuPath writes imports the same way
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(QUPATH["features"][:2]))
    again = service.annotations.import_geojson("PB-B1", path=bare)
    assert [a["geometry"] for a in again["annotations"]] == [f["geometry"] for f in QUPATH["features"][:2]]
    assert _exported(service.annotations.export_geojson("PB-B1")) == QUPATH["features"][:2]
    service.annotations.delete([a["id"] for a in again["annotations"]])
    # an edit is what the export says; the rest of the feature stays as it was
    edited = service.annotations.update(first["id"], name="R1 edited", class_name="Necrosis", color="#101010")
    assert (edited["name"], edited["class_name"], edited["color"]) == ("R1 edited", "Necrosis", "#101010")
    feature = _exported(service.annotations.export_geojson("PA-A1"))[0]
    assert feature["properties"] == {"objectType": "annotation", "name": "R1 edited",
                                     "classification": {"name": "Necrosis", "color": [16, 16, 16]}, "isLocked": False}
    assert feature["geometry"] == QUPATH["features"][0]["geometry"] and feature["id"] == QUPATH["features"][0]["id"]
    service.annotations.update(first["id"], name="R1", class_name="Tumor", color=[200, 0, 0])
    assert service.annotations.export_geojson("PA-A1") == QUPATH


def test_viewer_annotations_and_errors(world):
    service = world["service"]
    made = service.annotations.create("PC-C1", geojson.rectangle(0, 0, 224, 224), name="drawn", class_name="Tumor", color="#00ff00")
    assert made["shape"] == "rectangle" and made["source"] == "viewer" and made["slide"] == "PC-C1"
    slide_id = made["slide_id"]
    assert service.annotations.of_slide(str(slide_id))["annotations"] == [made]  # a slide by id, as the viewer names it
    feature = _exported(service.annotations.export_geojson("PC-C1"))[0]
    assert feature["properties"] == {"objectType": "annotation", "name": "drawn", "classification": {"name": "Tumor", "color": [0, 255, 0]}}
    with pytest.raises(NotFoundError, match="unknown slide 'nope'"):
        service.annotations.of_slide("nope")
    with pytest.raises(NotFoundError, match="unknown annotation id 99999"):
        service.annotations.delete([made["id"], 99999])
    assert service.annotations.get(made["id"]) == made  # nothing deleted
    with pytest.raises(InputError, match="geometry: Polygon ring 0"):
        service.annotations.create("PC-C1", {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]})
    with pytest.raises(InputError, match="color must be #rrggbb"):
        service.annotations.update(made["id"], color="green")
    assert service.annotations.delete([made["id"]]) == [made["id"]]


# -- search by annotation ---------------------------------------------------------------------------
def test_search_by_rectangle_annotation_is_the_box_query(world):
    service = world["service"]
    box_um = [TILE, 0.0, 2 * TILE, 2 * TILE]
    made = service.annotations.create("PA-A1", geojson.rectangle(box_um[0] / MPP, box_um[1] / MPP, box_um[2] / MPP, box_um[3] / MPP),
                                      name="query box")
    by_box = service.regions.search({"slide": "PA-A1", "box": box_um}, k=12, per_patient=4)
    for ref in ("query box", made["id"], str(made["id"])):
        by_annotation = service.regions.search({"slide": "PA-A1", "annotation": ref}, k=12, per_patient=4)
        assert by_annotation.as_dict()["patients"] == by_box.as_dict()["patients"]
        assert by_annotation.query["tiles"] == by_box.query["tiles"] == 4
        assert by_annotation.query["annotation"]["id"] == made["id"]
    scores = [t.score for p in by_box.patients for t in p.tiles]
    assert len(set(np.round(scores, 5))) > 1  # the hits differ, so equal answers mean the same query token
    # by id alone (ids are global)
    assert service.regions.search({"annotation": made["id"]}, k=12, per_patient=4).as_dict()["patients"] == by_box.as_dict()["patients"]
    # an L-shaped polygon uses the tiles whose centre lies inside it: 3 of its 2 x 2 grid
    ell = {"type": "Polygon", "coordinates": [[[0, 0], [448, 0], [448, 224], [224, 224], [224, 448], [0, 448], [0, 0]]]}
    shaped = service.annotations.create("PA-A1", ell, name="ell")
    result = service.regions.search({"slide": "PA-A1", "annotation": "ell"}, k=3)
    assert result.query["tiles"] == 3 and result.query["grid"] == [2, 2]
    service.annotations.delete([shaped["id"]])
    with pytest.raises(NotFoundError, match="has no annotation 'nope'"):
        service.regions.search({"slide": "PA-A1", "annotation": "nope"})
    line = service.annotations.create("PA-A1", {"type": "LineString", "coordinates": [[0, 0], [500, 500]]}, name="a line")
    with pytest.raises(InputError, match="is a line: region search needs an area"):
        service.regions.search({"slide": "PA-A1", "annotation": "a line"})
    small = service.annotations.create("PA-A1", geojson.rectangle(0, 0, 100, 100), name="small")
    with pytest.raises(InputError, match="smaller than one tile"):
        service.regions.search({"slide": "PA-A1", "annotation": "small"})
    service.annotations.delete([made["id"], line["id"], small["id"]])


def test_hits_as_geojson_are_tiles_in_level0_px_and_reimport(world):
    service = world["service"]
    result = service.regions.search({"patient": "PA", "tile": 1}, k=6, per_patient=3).as_dict()
    collection = geojson.hits_collection(result)
    tiles = [(p["patient"], t) for p in result["patients"] for t in p["tiles"]]
    assert len(collection["features"]) == len(tiles) == 6
    for rank, (feature, (patient, tile)) in enumerate(zip(collection["features"], tiles), start=1):
        props = feature["properties"]
        assert (props["rank"], props["patient"], props["slide"], props["score"]) == (rank, patient, tile["slide"], tile["score"])
        assert props["classification"]["name"] == "eagle-hit"
        x, y = tile["x_um"] / MPP, tile["y_um"] / MPP
        assert feature["geometry"] == geojson.rectangle(x, y, TILE_PX, TILE_PX)
    # each slide takes back its own hits (their pixels are its pixels); the others are reported, not misplaced
    slides = sorted({f["properties"]["slide"] for f in collection["features"]})
    data = json.loads(geojson.dumps(collection))
    for slide in slides:
        mine = [f for f in collection["features"] if f["properties"]["slide"] == slide]
        back = service.annotations.import_geojson(slide, data=data, source="hits.geojson")
        assert back["imported"] == len(mine) and {a["class_name"] for a in back["annotations"]} == {"eagle-hit"}
        assert [a["shape"] for a in back["annotations"]] == ["rectangle"] * len(mine)
        assert len(back["skipped"]) == 6 - len(mine) and all(e["slide"] != slide for e in back["skipped"])
        assert _exported(service.annotations.export_geojson(slide)) == mine
        service.annotations.delete([a["id"] for a in back["annotations"]])
    with pytest.raises(InputError, match="all 6 features name other slides"):
        service.annotations.import_geojson("PA-A1", data=data, source="hits.geojson")  # the query's own slide: no hits


def test_in_annotation_filter_keeps_patients_with_a_selected_tile_inside(world):
    from eagle_index.search import SearchFilters
    from eagle_index.store import tiles_repo

    service = world["service"]
    pb = service.catalog.patient_ids(["PB"])["PB"]
    (tile,) = [r for r in tiles_repo.stored_patient_tiles(service.catalog, pb) if r.patient_rank == 1]
    # a tumour region around PB's first selected tile; one on PC's slide that holds no tile centre
    around = service.annotations.create("PB-B1", geojson.rectangle(tile.x_um / MPP + 10, tile.y_um / MPP + 10, 200, 200),
                                        class_name="Tumour")
    beside = service.annotations.create("PC-C1", geojson.rectangle(5, 5, 50, 50), class_name="tumour")
    try:
        everyone = {h.patient for h in service.search(patient="PA", k=10).hits}
        assert everyone == {"PB", "PC"}
        only = service.search(patient="PA", k=10, filters=SearchFilters.build(in_annotation=["TUMOUR"]))
        assert [h.patient for h in only.hits] == ["PB"]
        regions = service.regions.search({"patient": "PA", "tile": 1}, k=10, filters=SearchFilters.build(in_annotation=["tumour"]))
        assert {p.patient for p in regions.patients} == {"PB"}
        with pytest.raises(NotFoundError, match="no annotations of class 'necrosis'"):
            service.search(patient="PA", k=10, filters=SearchFilters.build(in_annotation=["necrosis"]))
        service.annotations.update(around["id"], geometry=geojson.rectangle(5, 5, 50, 50))  # moved off the tile
        assert service.search(patient="PA", k=10, filters=SearchFilters.build(in_annotation=["tumour"])).hits == ()
    finally:
        service.annotations.delete([around["id"], beside["id"]])


def test_annotations_survive_reingest_and_supersede_and_go_with_the_slide(world, tmp_path):
    from sqlalchemy import select

    from eagle_index.store.catalog import Catalog
    from eagle_index.store.models import Slide

    service = world["service"]
    path = _slide(tmp_path, "PD-D1", 3, 3, 5)
    assert not service.ingest([path], patient="PD").failed
    made = service.annotations.import_geojson("PD-D1", data=QUPATH["features"][:2], source="qupath")
    service.ingest([path], patient="PD")  # the same file again: skipped, the annotations stay
    assert service.annotations.export_geojson("PD-D1")["features"] == QUPATH["features"][:2]
    # new content at the same path supersedes the old slide row: the annotations stay with the slide
    old_id = made["slide_id"]
    _slide(tmp_path, "PD-D1", 4, 3, 6)
    assert not service.ingest([path], patient="PD").failed
    shown = service.annotations.of_slide("PD-D1")
    assert shown["slide_id"] != old_id and [a["id"] for a in shown["annotations"]] == [a["id"] for a in made["annotations"]]
    assert service.annotations.export_geojson("PD-D1")["features"] == QUPATH["features"][:2]
    # deleting one of the two rows keeps them; deleting the last removes them
    with service.catalog.transaction() as session:
        ids = sorted(session.scalars(select(Slide.id).where(Slide.name == "PD-D1")))
    assert len(ids) == 2
    service.catalog.write(lambda s: Catalog.delete_slides(s, [ids[0]]))
    assert len(service.annotations.list("PD-D1")) == 2
    service.catalog.write(lambda s: Catalog.delete_slides(s, [ids[1]]))
    assert [a for a in service.annotations.list() if a["slide"] == "PD-D1"] == []
    with pytest.raises(NotFoundError):
        service.annotations.get(made["annotations"][0]["id"])


# -- the CLI --------------------------------------------------------------------------------------------
def _cli(data: Path, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "eagle_index", *map(str, args), "--data-dir", str(data)], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_import_list_export_delete_and_search(world, tmp_path):
    world["service"].close()
    world["service"] = None
    data = world["settings"].data_dir
    src = tmp_path / "qupath.geojson"
    src.write_text(json.dumps(QUPATH["features"]))  # the bare list
    done = _cli(data, "annotations", "import", src, "--slide", "PC-C1", "--json")
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout)
    assert imported["imported"] == 5
    listed = _cli(data, "annotations", "list", "--slide", "PC-C1")
    assert listed.returncode == 0 and "rectangle" in listed.stdout and "[Tumor] 'R1'" in listed.stdout, listed.stderr
    exported = _cli(data, "annotations", "export", "--slide", "PC-C1")
    assert exported.returncode == 0 and json.loads(exported.stdout) == QUPATH
    out = tmp_path / "out.geojson"
    assert _cli(data, "annotations", "export", "--slide", "PC-C1", "--out", out).returncode == 0
    assert json.loads(out.read_text()) == QUPATH
    # search-tiles by annotation, hits written as GeoJSON that imports again
    hits = tmp_path / "hits.geojson"
    found = _cli(data, "search-tiles", "--slide", "PC-C1", "--annotation", "R1", "--models", "tiny", "-k", "4", "--geojson", hits,
                 "--json")
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert result["query"]["annotation"]["name"] == "R1"
    collection = json.loads(hits.read_text())
    assert len(collection["features"]) == sum(len(p["tiles"]) for p in result["patients"]) == 4
    first = collection["features"][0]["properties"]["slide"]
    mine = sum(f["properties"]["slide"] == first for f in collection["features"])
    again = _cli(data, "annotations", "import", hits, "--slide", first, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["imported"] == mine, again.stderr
    assert len(json.loads(again.stdout)["skipped"]) == 4 - mine
    # one line for a malformed file, for an unknown id, for a missing --slide
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps([QUPATH["features"][0], {"type": "Feature", "properties": {"name": "T2"},
                                                       "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}}]))
    failed = _cli(data, "annotations", "import", bad, "--slide", "PC-C1")
    assert failed.returncode == 2 and failed.stderr.startswith("error: bad.geojson: features[1] ('T2'): ")
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    unknown = _cli(data, "annotations", "delete", "999999")
    assert unknown.returncode == 3 and "unknown annotation id 999999" in unknown.stderr
    removed = _cli(data, "annotations", "delete", *[a["id"] for a in imported["annotations"]])
    assert removed.returncode == 0 and "deleted 5 annotations" in removed.stdout
    assert "no annotations on slide PC-C1" in _cli(data, "annotations", "list", "--slide", "PC-C1").stdout


def test_cli_through_a_running_daemon(world, tmp_path):
    from test_daemon import Daemon

    data = world["settings"].data_dir
    src = tmp_path / "qupath.geojson"
    src.write_text(json.dumps(QUPATH))
    local = _cli(data, "search-tiles", "--slide", "PB-B1", "--box", f"0,0,{2 * TILE:.0f},{2 * TILE:.0f}", "--models", "tiny", "--json")
    assert local.returncode == 0, local.stderr
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    daemon = Daemon(data, inbox)
    try:
        done = _cli(data, "annotations", "import", src, "--slide", "PB-B1", "--json")
        assert done.returncode == 0, done.stderr
        ids = [a["id"] for a in json.loads(done.stdout)["annotations"]]
        assert json.loads(_cli(data, "annotations", "export", "--slide", "PB-B1").stdout) == QUPATH
        assert [a["id"] for a in json.loads(_cli(data, "annotations", "list", "--slide", "PB-B1", "--json").stdout)] == ids
        square = json.dumps([{"type": "Feature", "geometry": geojson.rectangle(0, 0, 2 * TILE_PX, 2 * TILE_PX),
                              "properties": {"name": "square"}}])
        (tmp_path / "square.geojson").write_text(square)
        assert _cli(data, "annotations", "import", tmp_path / "square.geojson", "--slide", "PB-B1").returncode == 0
        hits = tmp_path / "hits.geojson"
        remote = _cli(data, "search-tiles", "--slide", "PB-B1", "--annotation", "square", "--json", "--geojson", hits)
        assert remote.returncode == 0, remote.stderr
        assert json.loads(remote.stdout)["patients"] == json.loads(local.stdout)["patients"]
        assert len(json.loads(hits.read_text())["features"]) == sum(len(p["tiles"]) for p in json.loads(local.stdout)["patients"])
        bad = tmp_path / "bad.geojson"
        bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null, "properties": {}}]}')
        failed = _cli(data, "annotations", "import", bad, "--slide", "PB-B1")
        assert failed.returncode == 2 and failed.stderr.strip() == "error: bad.geojson: features[0]: has no geometry object"
        removed = _cli(data, "annotations", "delete", *ids)
        assert removed.returncode == 0, removed.stderr
        assert [a["name"] for a in json.loads(_cli(data, "annotations", "list", "--slide", "PB-B1", "--json").stdout)] == ["square"]
    finally:
        assert daemon.stop() == 0
    shutil.rmtree(inbox)
