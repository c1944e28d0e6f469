"""Annotations and region search in the slide viewer (issue 23 items 3 and 5), in the real browser.

The server is the one `make demo` starts (test_make_demo_browser's `demo` fixture: `python -m
eagle_index demo --data-dir <relative path>` from the repository root, port 8000 unless it is
taken), driven through Chromium with real mouse gestures on the OpenSeadragon viewer:
- a rectangle drawn on a slide is saved as an annotation, "Find similar regions" runs from it,
  the hits download as GeoJSON and are imported again through the viewer's import control;
- click-to-search on a tissue tile that is not one of the patient's selected tiles, and
  draw-a-box search (the box's µm sent as drawn);
- a polygon drawn corner by corner, selected by clicking inside it on the slide, edited, deleted.
Every page must load with no console error and no failed request (the `page` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_make_demo_browser import context, demo, goto, page  # noqa: F401  (the `make demo` server and its page)
from test_make_demo_browser import pytestmark as demo_marks

OSD = Path(__file__).resolve().parents[1] / "web" / "static" / "vendor" / "openseadragon" / "openseadragon.min.js"
pytestmark = [*demo_marks, pytest.mark.skipif(not OSD.exists(), reason="OpenSeadragon not built (make install runs npm ci and copies it)")]


def _api(page, path: str):
    response = page.request.get(f"{page.base}/api/v1{path}")
    assert response.ok, (path, response.status, response.text())
    return response.json()


def _settled(page) -> None:
    """The viewer shows a slide, every tile it needs is drawn and no animation runs."""
    page.wait_for_function("() => { const v = document.querySelector('#viewer')?.eagleViewer; const i = v && v.world.getItemAt(0);"
                           " return !!i && i.getFullyLoaded() && !v.isAnimating(); }", timeout=60_000)


def _open(page, patient: str, slide: str | None = None) -> dict:
    """The patient page with its viewer and annotation tools ready (on `slide` if given); the slide's overlay data."""
    goto(page, f"/patients/{patient}")
    page.wait_for_selector("#viewer[data-annotations-ready]", state="attached", timeout=60_000)
    if slide is not None:
        page.locator(f"#viewer-slides button:has-text('{slide}')").click()
        page.wait_for_function("(s) => document.querySelector('#viewer').slideViewer.data.slide === s"
                               " && document.querySelector('#viewer').dataset.annotations !== undefined", arg=slide)
    page.locator("#viewer").scroll_into_view_if_needed()
    _settled(page)
    return page.evaluate("() => document.querySelector('#viewer').slideViewer.data")


def _xy(page, x_px: float, y_px: float) -> tuple[float, float]:
    """Where level-0 pixel (x, y) of the slide shown is on the page (mouse coordinates); the viewer is
    scrolled to the middle of the window first (a click on a button below it may have scrolled it away)."""
    return tuple(page.evaluate(
        """([x, y]) => { const root = document.querySelector('#viewer'); root.scrollIntoView({ block: 'center' });
                         const r = root.getBoundingClientRect();
                         const p = root.eagleViewer.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
                         return [r.left + p.x, r.top + p.y]; }""", [x_px, y_px]))


def _px_per_screen_px(page) -> float:
    return page.evaluate("() => { const it = document.querySelector('#viewer').eagleViewer.world.getItemAt(0);"
                         " const a = it.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));"
                         " const b = it.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0)); return 1000 / (b.x - a.x); }")


def _drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=10)
    page.mouse.up()


def _tool(page, name: str):
    return page.locator("#annotation-tools").get_by_role("button", name=name, exact=True)


def _search_body(request) -> dict:
    return json.loads(request.post_data)


def _bbox(geometry: dict) -> list[float]:
    xs = [p[0] for ring in geometry["coordinates"] for p in ring]
    ys = [p[1] for ring in geometry["coordinates"] for p in ring]
    return [min(xs), min(ys), max(xs), max(ys)]


def test_a_drawn_box_is_saved_searched_and_its_hits_go_to_geojson_and_back(page, demo, tmp_path):
    """Issue 23, "done when": draw a box, save it as an annotation, find similar regions from it,
    download the hits as GeoJSON and import them again through the viewer's import control."""
    data = _open(page, "DEMO-001")
    slide, t = data["slide"], data["tile_px"]
    before = _api(page, f"/slides/{slide}/annotations")["annotations"]
    x0, y0 = data["tissue"]["x_px"][0], data["tissue"]["y_px"][0]
    box = [x0 + 0.1 * t, y0 + 0.1 * t, x0 + 1.7 * t, y0 + 1.6 * t]  # level-0 px

    rect = _tool(page, "Rectangle")
    rect.click()
    assert rect.get_attribute("aria-pressed") == "true" and "Esc cancels" in rect.get_attribute("title")
    _drag(page, _xy(page, box[0], box[1]), _xy(page, box[2], box[3]))
    form = page.locator("#annotation-form")
    form.wait_for()
    assert rect.get_attribute("aria-pressed") == "false"  # one shape per press of the tool
    form.get_by_label("Name").fill("tumour box")
    form.get_by_label("Class").fill("Tumor")
    assert form.get_by_label("Colour").input_value() == "#c80000"  # QuPath's colour for its Tumor class
    form.get_by_role("button", name="Save annotation").click()
    page.wait_for_selector("#annotation-list button:has-text('tumour box')")

    after = _api(page, f"/slides/{slide}/annotations")["annotations"]
    assert len(after) == len(before) + 1
    saved = next(a for a in after if a["name"] == "tumour box")
    assert saved["class_name"] == "Tumor" and saved["color"] == "#c80000" and saved["geometry"]["type"] == "Polygon"
    tolerance = 2.5 * _px_per_screen_px(page)  # the mouse lands on whole screen pixels
    assert _bbox(saved["geometry"]) == pytest.approx(box, abs=tolerance)
    assert page.locator("#viewer").get_attribute("data-annotations") == str(len(after))

    # "Find similar regions" from the saved annotation
    with page.expect_request(lambda r: r.url.endswith("/api/v1/search/tiles") and r.method == "POST") as sent:
        form.get_by_role("button", name="Find similar regions").click()
    body = _search_body(sent.value)
    assert body["annotation"] == saved["id"] and body["slide"] == slide and "box" not in body
    page.wait_for_selector("#region-results #region-hits article")
    assert "tumour box" in page.locator("#region-results .region-query").inner_text()
    patients = page.locator("#region-hits article").evaluate_all("(cards) => cards.map((c) => c.dataset.patient)")
    n_tiles = page.locator("#region-hits .region-tile").count()
    assert patients and "DEMO-001" not in patients and n_tiles >= len(patients)

    # the hits as GeoJSON: one rectangle per hit tile, with its patient and score
    with page.expect_download() as info:
        page.get_by_role("button", name="Download hits as GeoJSON").click()
    hits_file = tmp_path / "hits.geojson"
    info.value.save_as(hits_file)
    assert info.value.failure() is None and info.value.suggested_filename.endswith(".geojson")
    hits = json.loads(hits_file.read_text())
    assert hits["type"] == "FeatureCollection" and len(hits["features"]) == n_tiles
    assert {f["properties"]["patient"] for f in hits["features"]} == set(patients)
    assert all(f["geometry"]["type"] == "Polygon" for f in hits["features"])

    # ...and back in, through the viewer's import control, on a hit's own slide: a hit's pixels belong to the
    # slide it names, so the hits of other slides are left out (and the status says so)
    target = hits["features"][0]["properties"]
    goto(page, f"/patients/{target['patient']}")
    page.wait_for_selector("#viewer[data-annotations-ready]", state="attached", timeout=60_000)
    if page.evaluate("() => document.querySelector('#viewer').slideViewer.data.slide") != target["slide"]:
        page.locator(f"#viewer-slides button:has-text('{target['slide']}')").click()
    page.wait_for_function("(s) => document.querySelector('#viewer').slideViewer.data.slide === s"
                           " && document.querySelector('#viewer').dataset.annotations !== undefined", arg=target["slide"])
    slide = target["slide"]
    after = _api(page, f"/slides/{slide}/annotations")["annotations"]
    mine = [f for f in hits["features"] if f["properties"]["slide"] == slide]
    others = len(hits["features"]) - len(mine)
    page.get_by_label("Import QuPath GeoJSON").set_input_files(str(hits_file))
    page.wait_for_function("(n) => document.querySelector('#viewer').dataset.annotations === String(n)", arg=len(after) + len(mine))
    status = page.locator("#annotation-status").inner_text()
    assert f"imported {len(mine)} annotation" in status and (others == 0 or f"{others} feature" in status), status
    imported = _api(page, f"/slides/{slide}/annotations")["annotations"]
    assert len(imported) == len(after) + len(mine)
    new = [a for a in imported if a["id"] not in {b["id"] for b in after}]
    assert sorted(_bbox(a["geometry"]) for a in new) == sorted(_bbox(f["geometry"]) for f in mine)

    # the slide's annotations download as GeoJSON (what QuPath opens)
    with page.expect_download() as info:
        page.get_by_role("link", name="Download GeoJSON").click()
    exported = tmp_path / "slide.geojson"
    info.value.save_as(exported)
    features = json.loads(exported.read_text())
    features = features["features"] if isinstance(features, dict) else features
    assert len(features) == len(imported)
    assert sum(f["properties"].get("classification", {}).get("name") == "eagle-hit" for f in features) >= len(mine)


def test_click_to_search_any_tissue_tile_and_draw_a_box_search(page, demo):
    """Item 5: a point on a tissue tile that is not among the selected tiles, then a dragged box,
    each a region search with the slide position the user pointed at."""
    data = _open(page, "DEMO-001", slide="DEMO-001-S1")
    mpp, t = data["mpp"], data["tile_px"]
    selected = {(b["x_px"], b["y_px"]) for b in data["selected"]}
    tissue = list(zip(data["tissue"]["x_px"], data["tissue"]["y_px"], data["tissue"]["x_um"], data["tissue"]["y_um"]))
    x, y, x_um, y_um = next(tile for tile in tissue if (tile[0], tile[1]) not in selected)  # not one of the 25

    point = _tool(page, "Search a point")
    point.click()
    with page.expect_request(lambda r: r.url.endswith("/api/v1/search/tiles") and r.method == "POST") as sent:
        page.mouse.click(*_xy(page, x + 0.5 * t, y + 0.5 * t))
    body = _search_body(sent.value)
    tolerance = 2.5 * _px_per_screen_px(page) * mpp
    assert body["slide_id"] == data["slide_id"]
    assert body["x_um"] == pytest.approx((x + 0.5 * t) * mpp, abs=tolerance)
    assert body["y_um"] == pytest.approx((y + 0.5 * t) * mpp, abs=tolerance)
    page.wait_for_selector("#region-results #region-hits article")
    query = page.locator("#region-results .region-query").inner_text()
    assert f"DEMO-001-S1 at ({round(x_um)}, {round(y_um)}) µm" in query, query  # the stored tile under the click
    assert point.get_attribute("aria-pressed") == "false"
    assert page.locator("#tile-dialog").is_hidden()  # the click searched; it did not open a tile

    # Esc leaves a tool without doing anything
    box_tool = _tool(page, "Search a box")
    box_tool.click()
    assert page.locator("#viewer").get_attribute("data-tool") == "box"
    page.keyboard.press("Escape")
    assert box_tool.get_attribute("aria-pressed") == "false" and page.locator("#viewer").get_attribute("data-tool") == "pan"

    # a dragged box: its µm go to the search as drawn
    x0, y0 = data["tissue"]["x_px"][0], data["tissue"]["y_px"][0]
    corners = [x0 + 0.2 * t, y0 + 0.1 * t, x0 + 2.1 * t, y0 + 1.8 * t]
    box_tool.click()
    with page.expect_request(lambda r: r.url.endswith("/api/v1/search/tiles") and r.method == "POST") as sent:
        _drag(page, _xy(page, corners[0], corners[1]), _xy(page, corners[2], corners[3]))
    body = _search_body(sent.value)
    expected = [corners[0] * mpp, corners[1] * mpp, (corners[2] - corners[0]) * mpp, (corners[3] - corners[1]) * mpp]
    assert body["slide_id"] == data["slide_id"] and body["box"] == pytest.approx(expected, abs=2 * tolerance)
    page.wait_for_function("() => document.querySelector('#region-results .region-query')?.textContent.includes('region of DEMO-001-S1')")
    page.wait_for_selector("#region-results #region-hits article")


def test_a_polygon_is_drawn_selected_on_the_slide_edited_and_deleted(page, demo):
    data = _open(page, "DEMO-002")
    slide, t = data["slide"], data["tile_px"]
    before = len(_api(page, f"/slides/{slide}/annotations")["annotations"])
    page.locator("#viewer-legend").get_by_label("Selected tiles").uncheck()  # their boxes would take the click
    x0, y0 = data["tissue"]["x_px"][0], data["tissue"]["y_px"][0]
    corners = [(x0, y0), (x0 + 2 * t, y0 + 0.2 * t), (x0 + 1.8 * t, y0 + 1.5 * t), (x0 + 0.3 * t, y0 + 1.2 * t)]

    # Esc drops a drawn shape that was not saved
    _tool(page, "Rectangle").click()
    _drag(page, _xy(page, x0, y0), _xy(page, x0 + t, y0 + t))
    page.locator("#annotation-form").wait_for()
    page.keyboard.press("Escape")
    page.locator("#annotation-form").wait_for(state="detached")
    assert len(_api(page, f"/slides/{slide}/annotations")["annotations"]) == before

    _tool(page, "Polygon").click()
    for corner in corners[:-1]:
        page.mouse.click(*_xy(page, *corner))
    page.mouse.dblclick(*_xy(page, *corners[-1]))  # the last corner closes it
    form = page.locator("#annotation-form")
    form.wait_for()
    form.get_by_label("Name").fill("gland")
    form.get_by_label("Class").fill("Stroma")
    form.get_by_role("button", name="Save annotation").click()
    page.wait_for_selector("#annotation-list button:has-text('gland')")
    saved = next(a for a in _api(page, f"/slides/{slide}/annotations")["annotations"] if a["name"] == "gland")
    ring = saved["geometry"]["coordinates"][0]
    assert len(ring) == len(corners) + 1 and ring[0] == ring[-1]
    tolerance = 2.5 * _px_per_screen_px(page)
    for (x, y), (cx, cy) in zip(ring, corners):
        assert (x, y) == (pytest.approx(cx, abs=tolerance), pytest.approx(cy, abs=tolerance))

    # the layer can be hidden and shown again
    drawn = "() => Number(document.querySelector('#viewer').dataset.annotationsDrawn)"
    page.wait_for_function(f"{drawn} >= 1")
    page.get_by_label("Show on the slide").uncheck()
    page.wait_for_function(f"{drawn} === 0")
    page.get_by_label("Show on the slide").check()
    page.wait_for_function(f"{drawn} >= 1")

    # a click inside it on the slide selects it
    form.get_by_role("button", name="Close").click()
    assert page.locator("#annotation-form").count() == 0
    page.mouse.click(*_xy(page, x0 + t, y0 + 0.8 * t))
    page.wait_for_selector("#annotation-form h4:has-text('Annotation gland')")

    # edit its class and colour
    form.get_by_label("Class").fill("Necrosis")
    form.get_by_label("Colour").fill("#123456")
    with page.expect_response(lambda r: f"/api/v1/annotations/{saved['id']}" in r.url and r.request.method == "PUT"):
        form.get_by_role("button", name="Save changes").click()
    edited = next(a for a in _api(page, f"/slides/{slide}/annotations")["annotations"] if a["id"] == saved["id"])
    assert (edited["name"], edited["class_name"], edited["color"]) == ("gland", "Necrosis", "#123456")
    assert edited["geometry"] == saved["geometry"]

    # and delete it
    with page.expect_response(lambda r: f"/api/v1/annotations/{saved['id']}" in r.url and r.request.method == "DELETE"):
        form.get_by_role("button", name="Delete").click()
    page.wait_for_function("(n) => document.querySelector('#viewer').dataset.annotations === String(n)", arg=before)
    assert saved["id"] not in {a["id"] for a in _api(page, f"/slides/{slide}/annotations")["annotations"]}
    assert page.locator("#annotation-list button:has-text('gland')").count() == 0
