"""The web UI's shared scripts in a real browser (Chromium through Playwright, the server and page
fixtures of test_web_browser): the charts (Chart.js, installed by `make` from npm), the one polling
helper, and the patient type-ahead when answers come back out of order. Plus the JS linter's wiring.

Skipped without chromium/playwright (like test_web_browser), and the chart tests without the built
Chart.js (`make install`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_web_browser import CHROMIUM, HAVE_PLAYWRIGHT, context, goto, page, server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
CHART_JS = ROOT / "web" / "static" / "vendor" / "chartjs" / "chart.umd.min.js"



def browser(test):
    """A test that drives chromium."""
    test = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (make test installs it)")(test)
    return pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright not installed (pip install -e .[dev])")(test)


def charts(test):
    """A browser test of the charts, which need the built Chart.js."""
    return browser(pytest.mark.skipif(not CHART_JS.exists(), reason="Chart.js not built (make install)")(test))


def test_chartjs_and_eslint_come_from_npm_pinned_and_make_test_lints():
    package = json.loads((ROOT / "web" / "frontend" / "package.json").read_text())
    lock = json.loads((ROOT / "web" / "frontend" / "package-lock.json").read_text())
    for name, section in (("chart.js", "dependencies"), ("eslint", "devDependencies"), ("@eslint/js", "devDependencies")):
        version = package[section][name]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"pin an exact version of {name}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    assert lock["packages"]["node_modules/chart.js"]["license"] == "MIT"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: .*\blint-js\b", makefile, re.M)
    assert re.search(r"^lint-js: .*\bfrontend\b", makefile, re.M) and "web/frontend/eslint.config.mjs web/static/js" in makefile
    assert re.search(r"^frontend: .*\$\(CHART_JS\)", makefile, re.M)
    assert "static/vendor/chartjs/*.js" in (ROOT / "pyproject.toml").read_text()


SCATTER = """async ({ n, size }) => {
  const { scatter } = await import("/static/js/plot.js");
  const box = document.createElement("div");
  box.id = "scatter-test";
  box.style.width = `${size}px`;
  document.querySelector("main").prepend(box);
  window.opened = [];
  const colours = ["#245a8d", "#c0392b", "#2e8b57"];
  const points = Array.from({ length: n }, (_, i) => ({ x: Math.cos(i) * (i + 1), y: Math.sin(i) * (i + 1) - 5,
    color: colours[i % 3], label: `P${i} · demo`, patient: `P${i}` }));
  const chart = await scatter(box, { points, height: size, title: "test map", onOpen: (p) => window.opened.push(p.patient) });
  const canvas = box.querySelector("canvas");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) painted += 1;
  let [xlo, xhi, ylo, yhi] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const p of points) { xlo = Math.min(xlo, p.x); xhi = Math.max(xhi, p.x); ylo = Math.min(ylo, p.y); yhi = Math.max(yhi, p.y); }
  const { x, y } = chart.scales;
  return { drawn: chart.data.datasets.reduce((sum, d) => sum + d.data.length, 0), datasets: chart.data.datasets.length,
    spans: x.min < xlo && x.max > xhi && y.min < ylo && y.max > yhi, scales: [x.min, xlo, x.max, xhi, y.min, ylo, y.max, yhi], painted };
}"""


@charts
def test_a_scatter_of_200000_points_draws_on_a_canvas(page):  # noqa: F811
    n = 200_000
    goto(page, "/cohorts")
    out = page.evaluate(SCATTER, {"n": n, "size": 600})
    assert out["drawn"] == n and out["datasets"] == 3  # one dataset per colour
    assert out["spans"], out["scales"]  # the axes span every point, with room around them
    assert out["painted"] > 1000  # pixels were drawn
    assert page.locator("#scatter-test canvas").get_attribute("aria-label").startswith(f"test map: {n} points")


@charts
def test_a_map_point_shows_its_label_on_hover_and_keys_and_opens_on_click_and_enter(page):  # noqa: F811
    goto(page, "/cohorts")
    page.evaluate(SCATTER, {"n": 5, "size": 400})
    canvas = page.locator("#scatter-test canvas")
    tip = page.locator("#scatter-test .plot-tip")
    where = page.evaluate("""() => { const chart = Chart.getChart(document.querySelector('#scatter-test canvas'));
      const first = chart.data.datasets[0].data[0];
      const element = chart.getDatasetMeta(0).data[0];
      return { x: element.x, y: element.y, patient: `P${first.i}` }; }""")
    canvas.hover(position={"x": where["x"], "y": where["y"]})
    page.wait_for_selector("#scatter-test .plot-tip:not([hidden])")
    assert tip.inner_text() == f"{where['patient']} · demo"
    canvas.click(position={"x": where["x"], "y": where["y"]})
    page.wait_for_function("() => window.opened.length === 1")
    assert page.evaluate("window.opened") == [where["patient"]]
    page.mouse.move(0, 0)
    page.wait_for_selector("#scatter-test .plot-tip", state="hidden")
    canvas.focus()
    canvas.press("ArrowRight")
    canvas.press("ArrowRight")  # the second point of the list
    page.wait_for_selector("#scatter-test .plot-tip:not([hidden])")
    assert tip.inner_text() == "P1 · demo"
    canvas.press("Enter")
    page.wait_for_function("() => window.opened.length === 2")
    assert page.evaluate("window.opened") == [where["patient"], "P1"]


@charts
def test_line_plots_draw_folds_bands_and_a_log_axis(page):  # noqa: F811
    goto(page, "/probes")
    out = page.evaluate("""async () => {
      const { linePlot } = await import("/static/js/plot.js");
      const box = document.createElement("div");
      document.querySelector("main").prepend(box);
      const chart = await linePlot(box, { id: "line-test", title: "few-shot", xLabel: "k", yLabel: "AUROC", logX: true, xDomain: [1, 16],
        xTickValues: [1, 2, 4, 16], band: { points: [[1, 0.4, 0.6], [16, 0.8, 1.2]], label: "sd" },
        series: [{ points: [[1, 0.5], [16, 0.9]], markers: true, label: "mean" }, { points: [[1, 0.1], [2, 0.2]], fold: true, label: "fold 1" }] });
      return { labels: chart.data.datasets.map((d) => d.label), type: chart.scales.x.type,
        ticks: chart.scales.x.ticks.map((t) => t.value), bandTop: chart.data.datasets[1].data[1].y,
        id: box.querySelector("canvas").id };
    }""")
    assert out["labels"] == ["sd (low)", "sd", "mean", "fold 1"]
    assert out["type"] == "logarithmic" and out["ticks"] == [1, 2, 4, 16]
    assert out["bandTop"] == 1  # clamped to the y domain
    assert out["id"] == "line-test"


POLL = """async () => {
  const { poll } = await import("/static/js/common.js");
  let calls = 0;
  const value = await poll(async () => { calls += 1; return calls; }, { interval: 1, until: (v) => v === 3 });
  const stop = new AbortController();
  let after = 0;
  const stopped = poll(async () => { after += 1; if (after === 2) stop.abort(new Error("left the page")); return after; },
    { interval: 1, until: () => false, signal: stop.signal }).then(() => "resolved", (err) => err.message);
  const failed = await poll(async () => { throw new Error("HTTP 500"); }, { interval: 1 }).then(() => "resolved", (err) => err.message);
  return { value, calls, stopped: await stopped, after, failed };
}"""


@browser
def test_one_polling_helper_repeats_until_done_stops_on_abort_and_on_errors(page):  # noqa: F811
    goto(page, "/ingestion")
    out = page.evaluate(POLL)
    assert out == {"value": 3, "calls": 3, "stopped": "left the page", "after": 2, "failed": "HTTP 500"}
    for name in ("cohorts.js", "probes.js", "ingestion.js", "search.js", "common.js"):
        text = (ROOT / "web" / "static" / "js" / name).read_text()
        assert "setInterval(" not in text and "for (;;)" not in text, f"{name} polls on its own"


@browser
def test_the_typeahead_shows_the_last_keystrokes_answer_when_an_earlier_one_comes_back_later(page):  # noqa: F811
    """The first request (q=CASE) is held by the route until the second (q=IMP) has been answered and
    shown; then the first is answered, with patients nobody typed. The list must keep IMP's answer."""
    held = []

    def handle(route):
        if "q=CASE" in route.request.url:
            held.append(route)  # answered below, after IMP's answer is on screen
        else:
            route.continue_()

    goto(page, "/search")
    page.route(re.compile(r"/api/v1/patients\?q="), handle)
    box = page.get_by_role("combobox", name="Patient")
    with page.expect_request(lambda r: "q=CASE" in r.url) as first:
        box.fill("CASE")
    with page.expect_response(lambda r: "q=IMP" in r.url):
        box.fill("IMP")
    page.wait_for_selector("#patient-list[data-query='IMP'] li")
    assert held, "the first request was not held"
    stale = {"items": [{"patient": "STALE-1", "slides": 1, "vectors": [], "labels": {}}], "total": 1, "limit": 8, "offset": 0}
    try:
        held[0].fulfill(status=200, content_type="application/json", body=json.dumps(stale))
    except Exception:  # the page aborted the request already (the abort is the point); nothing to answer
        pass
    # wait until the browser is done with the first request (answered, or None once the page aborted it), then
    # for a later network round trip of the page's own: the first answer, if it came, was handed to the page before
    first.value.response()
    page.evaluate("() => fetch('/api/v1/health').then((r) => r.json())")
    items = page.locator("#patient-list li")
    assert page.locator("#patient-list").get_attribute("data-query") == "IMP"
    texts = [items.nth(i).inner_text() for i in range(items.count())]
    assert texts and all(t.startswith("IMP-") for t in texts), texts
    assert page.locator("#patient-list").is_visible()

