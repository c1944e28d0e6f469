"""The slide viewer in a real browser: `eagle-index serve` driven by Debian's chromium through Playwright.

A generated pyramidal slide (10,752 × 8,064 px at 0.5 µm/px) is ingested with the tiny models
next to the web archive; the test opens it in the Patient page viewer, zooms in three levels,
toggles each overlay, zooms to a gallery tile, opens a box's tile dialog, then opens the compare
view from a search hit and picks a tile pair. Every page must load with no console error and no
failed request; the viewer's canvas must show tissue (pixel variance). Screenshots go to a temp
folder (printed). Skipped only without /usr/bin/chromium, the playwright package, or the
OpenSeadragon build (`make install` copies it into web/static/vendor from npm).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from browser_fixtures import SKIPS, browser_context, check_page, free_port, get_json, goto, wait_for_server, watched_page
from test_web_fixtures import archive_copy

ROOT = Path(__file__).resolve().parents[1]
OSD = ROOT / "web" / "static" / "vendor" / "openseadragon" / "openseadragon.min.js"
MPP = 0.5
TILE_UM = 448.0

pytestmark = [
    *SKIPS,
    pytest.mark.skipif(not OSD.exists(), reason="OpenSeadragon not built (make install runs npm ci and copies it)"),
]


def _get(url: str):
    return get_json(url)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.demo import TISSUE_TYPES
    from eagle_index.service import EagleService
    from eagle_index.slides.synthetic import write_pyramidal_tiff

    data = archive_copy(tmp_path_factory, "viewer-browser")
    folder = tmp_path_factory.mktemp("viewer-slides")
    texture, palette = TISSUE_TYPES["dense"]
    write_pyramidal_tiff(folder / "VIEW-001-S1.tiff", mpp=MPP, size_um=(24 * TILE_UM / 2, 18 * TILE_UM / 2),
                         tissue_boxes_um=[(TILE_UM, TILE_UM, 6 * TILE_UM, 4 * TILE_UM), (8 * TILE_UM, 5 * TILE_UM, 3 * TILE_UM, 3 * TILE_UM)],
                         texture=texture, palette=palette, seed=11)
    with EagleService(Settings(data_dir=data, models="tiny", device="cpu")) as service:
        report = service.ingest([folder / "VIEW-001-S1.tiff"], patient="VIEW-001")
        assert not report.failed, report.failed
    port = free_port()
    log = open(data.parent / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "serve", "--models", "tiny", "--device", "cpu", "--port", str(port),
                             "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EAGLE_INDEX_LOG": "WARNING"})
    url = f"http://127.0.0.1:{port}"
    wait_for_server(proc, url, Path(log.name))
    yield {"url": url, "data": data}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    finally:
        log.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer-screenshots")
    print(f"viewer screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    with browser_context(tmp_path_factory.mktemp("viewer-chromium-profile"), viewport=(1400, 1000), downloads=False) as ctx:
        yield ctx


@pytest.fixture
def page(context, server):
    page = watched_page(context, server["url"])
    page.tiles = []
    page.on("request", lambda req: page.tiles.append(req.url) if "/tiles/" in req.url else None)
    yield page
    check_page(page)


_goto = goto


def _loaded(page, selector: str) -> None:
    """Wait until the viewer has a slide open, every tile it needs drawn, and no animation running."""
    done = "(sel) => { const v = document.querySelector(sel)?.eagleViewer; const item = v && v.world.getItemAt(0); return !!item && item.getFullyLoaded(); }"
    page.wait_for_function(done, arg=selector, timeout=60_000)
    # the spring animation has reached its target (current zoom and centre == target), then the final view's tiles
    settled = ("(sel) => { const vp = document.querySelector(sel).eagleViewer.viewport; "
               "return Math.abs(vp.getZoom(true) - vp.getZoom(false)) <= 1e-9 * vp.getZoom(false) "
               "&& vp.getCenter(true).distanceTo(vp.getCenter(false)) <= 1e-9; }")
    page.wait_for_function(settled, arg=selector, timeout=60_000)
    page.wait_for_function(done, arg=selector, timeout=60_000)


def _pixels(page, selector: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")).astype(np.float64)


def _shot(page, path: Path) -> None:
    page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar would otherwise land mid-page
    page.screenshot(path=str(path), full_page=True)


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of pixels that differ visibly."""
    return float((np.abs(a - b).sum(axis=2) > 30).mean())


def _state(page, selector: str) -> dict:
    data = page.locator(selector).evaluate("(e) => ({...e.dataset})")
    return {"slide": int(data["slide"]), "x": float(data["centerX"]), "y": float(data["centerY"]), "zoom": float(data["zoom"]),
            "layers": data.get("layers", "")}


def _levels(urls: list[str]) -> list[int]:
    return [int(u.split("/tiles/")[1].split("/")[0]) for u in urls]


def test_patient_viewer_zooms_toggles_overlays_and_follows_the_gallery(page, server, shots):
    view = _get(f"{server['url']}/api/v1/patients/VIEW-001/viewer")
    _goto(page, "/patients/VIEW-001")
    page.wait_for_selector("#viewer[data-ready]", state="attached", timeout=60_000)
    _loaded(page, "#viewer")
    home = _pixels(page, "#viewer")
    assert home.std() > 10, "the viewer canvas is blank"
    _shot(page, shots / "patient-viewer.png")
    start = _state(page, "#viewer")
    assert start["slide"] == view["slides"][0]["id"]
    levels_home = max(_levels(page.tiles))

    # zoom in three levels with the viewer's own button (2x per click)
    page.tiles.clear()
    for _ in range(3):
        page.locator("#viewer").get_by_title("Zoom in").click()
        page.wait_for_timeout(150)
    _loaded(page, "#viewer")
    zoomed = _state(page, "#viewer")
    assert zoomed["zoom"] / start["zoom"] == pytest.approx(8, rel=0.02)
    assert max(_levels(page.tiles)) >= levels_home + 2, "no higher-resolution tiles were loaded"
    assert _pixels(page, "#viewer").std() > 10
    page.locator("#viewer").screenshot(path=str(shots / "zoomed.png"))

    # each overlay toggles, and changes what is drawn
    page.locator("#viewer").get_by_title("Go home").click()
    _loaded(page, "#viewer")
    for name, label in (("grid", "Tissue tiles"), ("heat", "Attention heatmap"), ("boxes", "Selected tiles")):
        before = _pixels(page, "#viewer")
        was_on = name in _state(page, "#viewer")["layers"].split()
        page.locator("#viewer-legend").get_by_label(label).click()
        page.wait_for_timeout(100)
        assert (name in _state(page, "#viewer")["layers"].split()) != was_on
        after = _pixels(page, "#viewer")
        assert _changed(after, before) > 0.003, f"toggling {label} changed nothing"
        page.locator("#viewer").screenshot(path=str(shots / f"overlay-{name}-{'off' if was_on else 'on'}.png"))
    page.locator("#viewer-legend").get_by_label("Selected tiles").check()
    before = _pixels(page, "#viewer")
    page.locator("#viewer-legend").get_by_label("Heatmap opacity").fill("0.9")
    page.wait_for_timeout(100)
    assert _changed(_pixels(page, "#viewer"), before) > 0.003, "the opacity slider changed nothing"

    # a gallery tile zooms the viewer to its box
    target = next(b for b in view["selected"] if b["rank"] == 3)
    page.locator(".gallery button[data-rank='3']").click()
    _loaded(page, "#viewer")
    moved = _state(page, "#viewer")
    assert moved["x"] == pytest.approx(target["x_px"] + target["size_px"] / 2, abs=target["size_px"] / 4)
    assert moved["y"] == pytest.approx(target["y_px"] + target["size_px"] / 2, abs=target["size_px"] / 4)
    assert moved["zoom"] > start["zoom"] * 2
    page.locator("#viewer").screenshot(path=str(shots / "gallery-zoom.png"))

    # a box on the viewer opens the tile dialog
    point = page.locator("#viewer").evaluate(
        """(e, b) => { const item = e.eagleViewer.world.getItemAt(0);
                       const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(b.x_px + b.size_px / 2, b.y_px + b.size_px / 2));
                       return {x: p.x, y: p.y}; }""", target)
    box = page.locator("#viewer").bounding_box()
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    dialog = page.locator("#tile-dialog")
    dialog.wait_for(state="visible")
    assert "#3" in page.locator("#tile-dialog-title").inner_text()
    page.wait_for_function("() => { const i = document.querySelector('#tile-dialog-img'); return i.complete && i.naturalWidth === 224; }")
    page.keyboard.press("Escape")

    # an imported-only patient gets an explanation instead of a viewer
    _goto(page, "/patients/IMP-003")
    page.wait_for_selector("#viewer-note .note")
    assert "imported" in page.locator("#viewer-note").inner_text()
    assert page.locator("#viewer").is_hidden()


def test_compare_view_from_a_search_hit_pans_both_viewers_to_a_pair(page, server, shots):
    _goto(page, "/search?patient=VIEW-001")
    page.wait_for_selector("#hits article")
    card = page.locator("#hits article[data-patient='CASE-001']")
    link = card.get_by_role("link", name="Compare")
    assert link.get_attribute("href") == "/compare?query=VIEW-001&hit=CASE-001"
    page.wait_for_function("() => [...document.images].every((i) => i.complete)")  # leaving early would abort them
    link.click()
    page.wait_for_selector("body[data-ready]", state="attached")
    expected = _get(f"{server['url']}/api/v1/compare?query=VIEW-001&hit=CASE-001&pairs=10")
    page.wait_for_selector("#query-viewer[data-slide]", state="attached")
    page.wait_for_selector("#hit-viewer[data-slide]", state="attached")
    _loaded(page, "#query-viewer")
    _loaded(page, "#hit-viewer")
    assert _pixels(page, "#query-viewer").std() > 10 and _pixels(page, "#hit-viewer").std() > 10
    assert page.locator("#pairs .pair-pick").count() == len(expected["pairs"]) > 1
    _shot(page, shots / "compare.png")
    # one heatmap scale for both viewers (the union of the two patients' ranges), and the legend says so
    ends = [page.locator(f"{side} .heat-ends .num").all_inner_texts() for side in ("#query-legend", "#hit-legend")]
    assert ends[0] == ends[1] and "–" not in ends[0]
    ranges = [expected["query"]["attention_range"], expected["hit"]["attention_range"]]
    assert ranges[0] != ranges[1]  # else one shared scale is not told from two own ones
    assert float(ends[0][0]) == pytest.approx(min(r[0] for r in ranges), abs=1e-3)
    assert float(ends[0][1]) == pytest.approx(max(r[1] for r in ranges), abs=1e-3)
    assert "both patients" in page.locator("#hit-legend .heat-scope").inner_text()

    pair = expected["pairs"][1]
    page.locator("#pairs .pair-pick[data-pair='1']").click()
    _loaded(page, "#query-viewer")
    _loaded(page, "#hit-viewer")
    for selector, box in (("#query-viewer", pair["query"]), ("#hit-viewer", pair["hit"])):
        state = _state(page, selector)
        assert state["slide"] == box["slide_id"]
        assert state["x"] == pytest.approx(box["x_px"] + box["size_px"] / 2, abs=box["size_px"] / 4), selector
        assert state["y"] == pytest.approx(box["y_px"] + box["size_px"] / 2, abs=box["size_px"] / 4), selector
    assert page.locator("#pairs .pair-pick[data-pair='1']").get_attribute("aria-pressed") == "true"
    _shot(page, shots / "compare-pair.png")

    # synchronised zoom: the same µm per screen pixel on both sides
    page.get_by_label("Synchronise zoom (same µm per screen pixel)").check()
    page.locator("#query-viewer").get_by_title("Zoom in").click()
    _loaded(page, "#query-viewer")
    _loaded(page, "#hit-viewer")
    q, h = _state(page, "#query-viewer"), _state(page, "#hit-viewer")
    mpp_q = view_mpp(server, q["slide"])
    mpp_h = view_mpp(server, h["slide"])
    assert h["zoom"] == pytest.approx(q["zoom"] * mpp_h / mpp_q, rel=0.02)


def view_mpp(server, slide_id: int) -> float:
    return _get(f"{server['url']}/api/v1/slides/{slide_id}/overlays")["mpp"]
