"""The real server (`eagle-index serve`) driven by headless Chromium through Playwright.

Needs the Debian `chromium` binary and the `playwright` package (`make test` installs both);
skipped cleanly without them. A screenshot of each page goes to a temporary folder (never into the repository).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import tempfile
from pathlib import Path

import pytest

from browser_fixtures import (  # noqa: F401  (CHROMIUM, HAVE_PLAYWRIGHT, goto: other modules import them from here)
    CHROMIUM, HAVE_PLAYWRIGHT, SKIPS, browser_context, check_page, free_port, get_json, goto, wait_for_server, watched_page)
from test_web_fixtures import archive_copy

SHOTS = Path(tempfile.gettempdir()) / "eagle-index-screenshots"

pytestmark = SKIPS


def _free_port() -> int:
    return free_port()


def _get(url: str) -> dict:
    return get_json(url, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = archive_copy(tmp_path_factory, "web-browser")
    inbox = tmp_path_factory.mktemp("browser-inbox")
    (inbox / "TCGA-ZZ-0001-01Z-00-DX1.tiff").write_bytes(b"not a slide at all")  # fails: the ingestion page shows it
    port = _free_port()
    log = open(data.parent / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eagle_index", "serve", "--models", "tiny", "--device", "cpu", "--port", str(port),
         "--data-dir", str(data), "--watch", str(inbox), "--max-attempts", "1", "--settle-seconds", "0.5", "--poll-seconds", "0.5"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EAGLE_INDEX_LOG": "WARNING"})
    url = f"http://127.0.0.1:{port}"
    wait_for_server(proc, url, Path(log.name))
    yield {"url": url, "data": data, "slides": tmp_path_factory.getbasetemp() / "web-archive" / "slides"}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    finally:
        log.close()


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser_context(tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx


@pytest.fixture
def page(context, server):
    # pages here provoke 4xx answers on purpose (bad uploads, unknown ids): the browser's line about them is not a failure
    page = watched_page(context, server["url"], http_errors=False, failed_requests=False, ignore_console=("Failed to load resource",))
    yield page
    check_page(page)


def server_log(server, lines: int = 40) -> str:
    """The end of the test server's log: what a failed step's message shows."""
    return "\n".join((server["data"].parent / "server.log").read_text(errors="replace").splitlines()[-lines:])


def shot(page, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0); document.getElementById('toast').hidden = true")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_search_by_patient_shows_the_expected_top_hit(page, server):
    expected = _get(f"{server['url']}/api/v1/search?patient=IMP-001&k=10")["hits"]
    assert expected[0]["patient"] == "IMP-002"
    goto(page, "/search")
    page.get_by_label("Predict this label from the neighbours").select_option("TISSUE")
    box = page.get_by_role("combobox", name="Patient")
    box.fill("IMP-00")
    page.wait_for_selector("#patient-list li")
    box.press("ArrowDown")  # keyboard: the first suggestion, IMP-001
    box.press("Enter")
    page.wait_for_selector("#hits article")
    cards = page.locator("#hits article")
    assert cards.count() == 10
    assert cards.first.get_attribute("data-patient") == expected[0]["patient"]
    assert [cards.nth(i).get_attribute("data-patient") for i in range(10)] == [h["patient"] for h in expected]
    assert page.locator(".vote-pred").inner_text() in ("dense", "pale", "fatty")
    # a patient with slides: thumbnails with tile boxes, and the matching tile pairs on demand
    top = _get(f"{server['url']}/api/v1/search?patient=CASE-001&k=10")["hits"][0]["patient"]
    goto(page, "/search?patient=CASE-001")
    page.wait_for_selector("#hits article")
    first = page.locator("#hits article").first
    assert first.get_attribute("data-patient") == top
    # the score's context: its percentile among all patient pairs of this archive, as the API answers it
    percentile = _get(f"{server['url']}/api/v1/search?patient=CASE-001&k=10")["hits"][0]["percentile"]
    assert first.locator(".score-context").inner_text() == f"closer than {percentile:.1f}% of patient pairs here"
    first.get_by_role("button", name="Matching tiles").click()
    page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#hits article .pair img')]; return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0); }")
    shot(page, "search")


def test_search_by_an_uploaded_slide(page, server):
    goto(page, "/search")
    page.get_by_role("tab", name="Upload a slide").click()
    page.get_by_label("Slide file").set_input_files(str(server["slides"] / "CASE-003-S1.tiff"))
    page.get_by_label("Patient id (optional)").fill("CASE-003")
    page.get_by_role("button", name="Embed and search").click()
    page.wait_for_selector("#hits article", timeout=120_000)  # the server embeds it with the tiny models
    assert "CASE-003-S1.tiff" in page.locator(".query-card").inner_text()
    assert "CASE-003" not in [page.locator("#hits article").nth(i).get_attribute("data-patient")
                              for i in range(page.locator("#hits article").count())]


def test_patient_page_shows_slides_tiles_and_labels(page, server):
    detail = _get(f"{server['url']}/api/v1/patients/CASE-001")
    goto(page, "/patients/CASE-001")
    page.wait_for_selector(".gallery button")
    assert page.locator(".gallery button").count() == len(detail["tiles"])
    assert page.locator(".slide-view rect.tile-box").count() == len(detail["tiles"])
    page.locator(".slide-view rect.tile-box").first.focus()
    page.keyboard.press("Enter")  # keyboard opens the tile dialog (gallery tiles zoom the slide viewer: test_web_viewer_browser.py)
    dialog = page.locator("#tile-dialog")
    dialog.wait_for(state="visible")
    page.wait_for_function("() => { const i = document.querySelector('#tile-dialog-img'); return i.complete && i.naturalWidth === 224; }")
    assert "attention" in dialog.inner_text()
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.wait_for_selector("#neighbours li a")
    page.get_by_label("Name").fill("reviewed")
    page.get_by_label("Value").fill("yes")
    page.get_by_role("button", name="Save label").click()
    # the save answers in #label-status; a write may queue behind an ingest on this loaded machine, so wait as
    # long as the embedding waits above, and say what the page and the server said if it did not save
    page.wait_for_function("() => document.querySelector('#label-status').textContent !== ''", timeout=120_000)
    status = page.locator("#label-status").inner_text()
    assert status == "saved reviewed", f"label save answered {status!r}; server log:\n{server_log(server)}"
    page.wait_for_selector("#label-rows th:text('reviewed')")
    shot(page, "patient")
    goto(page, "/patients/IMP-003")
    page.wait_for_selector("#slides .empty img")


# The charts are Chart.js canvases: what they draw is read from the chart (Chart.getChart(canvas)).
MAP_POINTS = "() => Chart.getChart(document.querySelector('#map canvas')).data.datasets.reduce((n, d) => n + d.data.length, 0)"
FIRST_POINT = "() => { const p = Chart.getChart(document.querySelector('#map canvas')).getDatasetMeta(0).data[0]; return { x: p.x, y: p.y }; }"
CURVES = "(selector) => Chart.getChart(document.querySelector(selector)).data.datasets.map((d) => d.label)"


def test_a_cohort_is_built_saved_and_exported(page, server, tmp_path):
    goto(page, "/cohorts")
    page.get_by_label("Name", exact=True).fill("browser dense")
    page.get_by_role("button", name="Add a label rule").click()
    page.locator(".label-rule select").select_option("TISSUE")
    page.locator(".label-rule").get_by_label("dense").check()
    page.wait_for_function("() => document.querySelector('#live-count b').textContent === '14'")
    page.get_by_role("button", name="Save cohort").click()
    page.wait_for_selector("#cohort-rows tr[data-cohort='browser dense']")
    page.wait_for_selector("#map canvas", timeout=120_000)  # UMAP compiles with numba on first use
    assert page.evaluate(MAP_POINTS) == 14  # the points Chart.js draws on the map's canvas
    assert page.locator("#member-rows tr").count() == 14
    with page.expect_download() as info:
        page.locator("#export-buttons a[data-format='stamp']").click()
    target = tmp_path / "stamp.csv"
    info.value.save_as(target)
    lines = target.read_text().splitlines()
    assert lines[0] == "PATIENT,FILENAME" and "CASE-001,CASE-001-S1.tiff" in lines
    page.get_by_role("button", name="Find duplicates").click()
    page.wait_for_selector("#dup-result table")
    assert "IMP-001" in page.locator("#dup-result").inner_text() and "IMP-002" in page.locator("#dup-result").inner_text()
    point = page.evaluate(FIRST_POINT)
    page.locator("#map canvas").hover(position=point)
    page.wait_for_selector(".plot-tip:not([hidden])")
    shot(page, "cohorts")


def test_a_probe_is_trained_and_its_roc_curve_appears(page, server):
    goto(page, "/probes")
    page.get_by_label("Label").select_option("MSI")
    page.get_by_label("Folds").fill("3")
    page.get_by_label("Name (optional)").fill("msi-browser")
    page.get_by_role("button", name="Train").click()
    page.wait_for_selector("#roc-chart", timeout=90_000)
    assert page.locator("#probe-title").inner_text() == "msi-browser"
    assert "±" in page.locator("#metrics").inner_text()
    curves = page.evaluate(CURVES, "#roc-chart")
    assert len([c for c in curves if c.startswith("fold ")]) == 3 and any(c.startswith("pooled: AUROC") for c in curves)
    page.get_by_role("button", name="Compute").click()  # the few-shot curve, trained in the background
    page.wait_for_selector("#fewshot-chart", timeout=90_000)
    assert "mean AUROC" in page.evaluate(CURVES, "#fewshot-chart")
    page.get_by_role("button", name="Apply to archive").click()
    page.wait_for_selector("#candidate-rows tr[data-patient]")
    rows = page.locator("#candidate-rows tr[data-patient]")
    ranks = [int(rows.nth(i).locator("td").first.inner_text()) for i in range(rows.count())]
    assert len(ranks) == 12 and ranks == sorted(ranks)  # the 12 patients without an MSI value, archive-wide ranks
    assert "unknown" in rows.first.inner_text()
    shot(page, "probes")


def test_ingestion_page_shows_failures_and_requeues(page, server):
    deadline = time.time() + 120
    while not _get(f"{server['url']}/api/v1/status")["failures"]:
        assert time.time() < deadline, "the broken slide never failed"
        time.sleep(0.5)
    goto(page, "/ingestion")
    page.wait_for_selector("#failure-rows .error-text")
    assert "TCGA-ZZ-0001" in page.locator("#failure-rows").inner_text()
    shot(page, "ingestion")
    page.get_by_role("button", name="re-queue TCGA-ZZ-0001-01Z-00-DX1.tiff").click()
    page.wait_for_selector("#toast:not([hidden])")
    assert "queued again" in page.locator("#toast").inner_text()


def test_find_similar_regions_from_a_tile_and_from_an_uploaded_image(page, server, tmp_path):
    """Patient gallery -> "Find similar regions" -> tiles grouped by patient with their images; the tile
    dialog and the search result tiles carry the same action; an image uploaded on the Search page."""
    detail = _get(f"{server['url']}/api/v1/patients/CASE-001")
    tile = detail["tiles"][0]
    goto(page, "/patients/CASE-001")
    page.wait_for_selector(".gallery .region-link")
    assert page.locator(".gallery .region-link").count() == len(detail["tiles"])
    page.locator(".slide-view rect.tile-box").first.focus()
    page.keyboard.press("Enter")  # a tile box opens the tile dialog (gallery tiles zoom the slide viewer)
    dialog_link = page.locator("#tile-dialog-region")
    dialog_link.wait_for(state="visible")
    assert "region_slide=" in dialog_link.get_attribute("href")
    page.keyboard.press("Escape")
    page.locator(".gallery .region-link").first.click()
    page.wait_for_selector("#region-hits article")
    cards = page.locator("#region-hits article")
    patients = [cards.nth(i).get_attribute("data-patient") for i in range(cards.count())]
    assert patients and "CASE-001" not in patients
    expected = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{server['url']}/api/v1/search/tiles", data=json.dumps({"slide_id": tile["slide_id"], "x_um": tile["x_um"], "y_um": tile["y_um"],
                                                                 "k": 20, "per_patient": 3}).encode(),
        headers={"Content-Type": "application/json"}), timeout=60).read())
    assert patients == [p["patient"] for p in expected["patients"]]
    page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#region-hits img')]; return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth === 224); }")
    # the query names its slide and patient and shows its tile; options that rank patient vectors are hidden
    stored = page.locator("#region-stored").inner_text()
    assert f"slide {tile['slide']} (patient CASE-001)" in stored and "slide_id" not in stored, stored
    for label in ("Results", "Vector", "Predict this label from the neighbours"):
        assert not page.locator("#search-options").get_by_label(label, exact=True).is_visible(), label
    page.wait_for_function("() => { const i = document.querySelector('.region-query img'); return i && i.complete && i.naturalWidth > 0; }")
    assert page.locator("#region-hits .region-link").count() == sum(len(p["tiles"]) for p in expected["patients"])
    shot(page, "regions")
    # search results: the matching tile pairs carry the action too
    goto(page, "/search?patient=CASE-001")
    page.wait_for_selector("#hits article")
    page.locator("#hits article").first.get_by_role("button", name="Matching tiles").click()
    page.wait_for_selector("#hits article .pair .region-link")
    # an uploaded image on the Search page (a tile as PNG at 2 µm/px)
    png = tmp_path / "region.png"
    png.write_bytes(urllib.request.urlopen(f"{server['url']}{tile['tile_url']}", timeout=30).read())
    goto(page, "/search")
    page.get_by_role("tab", name="Similar regions").click()
    page.get_by_label("Image of a region").set_input_files(str(png))
    page.get_by_label("µm per pixel").fill("2.0")
    page.get_by_role("button", name="Find similar regions").click()
    page.wait_for_selector("#region-hits article")
    assert page.locator("#region-hits article").first.get_attribute("data-patient") == "CASE-001"
    assert "region.png" in page.locator(".region-query").inner_text()
    # the user's own image is shown as the query
    page.wait_for_function("() => { const i = document.querySelector('.region-query img'); return i && i.src.startsWith('blob:') && i.complete && i.naturalWidth === 224; }")
    page.get_by_role("tab", name="Patient").click()
    assert page.locator("#opt-k").is_visible() and page.locator("#opt-kind").is_visible()
