"""The UI as a pathologist reviews it (issue 21, item 11), in headless Chromium against `eagle-index serve`:
what a page shows agrees with what it exports, and defaults never ask a meaningless question."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request

import pytest

from test_web_browser import _get, context, goto, page, server  # noqa: F401 - fixtures of the browser tests

pytestmark = __import__("test_web_browser").pytestmark


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def probe(server):
    started = _post(f"{server['url']}/api/v1/probes", {"label": "MSI", "folds": 3, "name": "msi-review"})
    deadline = time.time() + 120
    while _get(f"{server['url']}/api/v1/probes/msi-review")["status"] == "training":
        assert time.time() < deadline
        time.sleep(0.3)
    return started["probe"]


def test_probe_apply_table_and_its_csv_agree(page, server, probe):
    """"Apply to archive" with training patients hidden: the CSV link lists the same patients in the same
    order (continued beyond the table's top N), and follows the checkbox when it changes."""
    goto(page, "/probes")
    page.locator(f"#probe-rows tr[data-probe='{probe}'] button").first.click()
    page.wait_for_selector("#apply-panel:not([hidden])")
    assert page.locator("#apply-exclude").is_checked()
    page.locator("#apply-top").select_option("25")
    page.get_by_role("button", name="Apply to archive").click()
    page.wait_for_function("() => document.querySelector('#apply-note').textContent.includes('scored')")
    page.wait_for_selector("#candidate-rows tr[data-patient]", state="attached")
    page.wait_for_function("() => !document.querySelector('#export-candidates').hidden")
    rows = page.locator("#candidate-rows tr[data-patient]")
    shown = [rows.nth(i).get_attribute("data-patient") for i in range(rows.count())]
    href = page.locator("#export-candidates").get_attribute("href")
    table = list(csv.DictReader(io.StringIO(_fetch(f"{server['url']}{href}"))))
    assert [r["patient"] for r in table[:len(shown)]] == shown
    assert all(r["in_training"] == "False" for r in table)  # hidden in the table, so not in its CSV either
    assert f"all {len(table)}" in page.locator("#export-candidates").inner_text()
    assert str(len(table)) in page.locator("#apply-note").inner_text()
    # showing training patients: the table and the CSV both list everyone scored
    page.locator("#apply-exclude").uncheck()
    page.wait_for_function("() => !document.querySelector('#export-candidates').href.includes('exclude_training')")
    everyone = list(csv.DictReader(io.StringIO(_fetch(server["url"] + page.locator("#export-candidates").get_attribute("href")))))
    assert len(everyone) > len(table) and any(r["in_training"] == "True" for r in everyone)
    page.wait_for_function("() => document.querySelector('#candidate-rows').textContent.includes('training')")
    rows = page.locator("#candidate-rows tr[data-patient]")
    assert [rows.nth(i).get_attribute("data-patient") for i in range(rows.count())] == [r["patient"] for r in everyone[:rows.count()]]


def test_leakage_check_never_defaults_to_one_cohort_against_itself(page, server):
    def cohort(name):
        _post(f"{server['url']}/api/v1/cohorts", {"name": name, "definition": {"labels": {"TISSUE": ["dense"]}}, "replace": True})

    cohort("review-a")  # one cohort: nothing to compare it with, and the form says so instead of comparing it to itself
    goto(page, "/cohorts")
    page.wait_for_selector("#leak-a option[value='review-a']", state="attached")
    assert page.locator("#leak-b").input_value() != "review-a"
    assert page.locator("#leak-form button[type=submit]").is_disabled()
    assert page.locator("#leak-hint").is_visible()
    cohort("review-b")
    goto(page, "/cohorts")
    page.wait_for_selector("#leak-b option[value='review-b']", state="attached")
    a, b = page.locator("#leak-a").input_value(), page.locator("#leak-b").input_value()
    assert a and b and a != b
    page.locator("#leak-b").select_option(a)  # the same cohort twice: said, and not run
    assert page.locator("#leak-form button[type=submit]").is_disabled()
    assert "same cohort" in page.locator("#leak-hint").inner_text()
    page.locator("#leak-b").select_option(b)
    page.get_by_role("button", name="Check leakage").click()
    page.wait_for_selector("#leak-result p")
    assert "Leakage" in page.locator("#leak-result").inner_text()  # two cohorts with the same members leak
    with pytest.raises(urllib.error.HTTPError) as refused:
        _fetch(f"{server['url']}/api/v1/quality/leakage?a={a}&b={a}")
    assert refused.value.code == 400


def test_matching_tile_pairs_name_each_tiles_slide_position_and_rank(page, server):
    top = _get(f"{server['url']}/api/v1/search?patient=CASE-001&k=10")["hits"][0]["patient"]
    pairs = _get(f"{server['url']}/api/v1/patients/CASE-001/matches/{top}?pairs=4")["pairs"]
    assert pairs and all(1 <= p["query_tile_rank"] <= p["query_tiles"] and 1 <= p["hit_tile_rank"] <= p["hit_tiles"] for p in pairs)
    goto(page, "/search?patient=CASE-001")
    page.wait_for_selector("#hits article")
    page.locator("#hits article").first.get_by_role("button", name="Matching tiles").click()
    page.wait_for_selector("#hits article .pair figcaption")
    first = pairs[0]
    captions = page.locator("#hits article").first.locator(".pair").first.locator("figcaption")
    query, match = captions.nth(0).inner_text(), captions.nth(1).inner_text()
    assert first["query_slide"] in query and f"x {round(first['query_x_um'])} µm" in query
    assert f"tile #{first['query_tile_rank']} of {first['query_tiles']}" in query
    assert first["hit_slide"] in match and f"tile #{first['hit_tile_rank']} of {first['hit_tiles']}" in match
    assert "pair 1" in page.locator("#hits article").first.locator(".pair-sim").first.inner_text()
