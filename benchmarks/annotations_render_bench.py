"""Annotation overlay in the slide viewer: 10,000 annotations on one slide, time to first render and
frame time while panning and zooming, in Chromium (issue 23 item 3).

    .venv/bin/python benchmarks/annotations_render_bench.py [--n 10000] [--frames 240] [--url http://127.0.0.1:8000]

Set-up (not timed): without --url, `eagle-index demo` is started in a temp folder on a free port
(as `make demo` starts it) and its first patient's viewer slide is used. N annotations (QuPath
GeoJSON: 85% cell-like polygons of 10-16 corners, 10% rectangles, 5% points, scattered over the
slide with seeded random positions and six classes) are inserted through the API in one
`POST /api/v1/slides/<slide>/annotations/import` (timed and printed apart); the benchmark's earlier
annotations on that slide are deleted first.

Timed in the browser (Debian's chromium, headless, 1280 × 900, device pixel ratio 1):
- time to first render: navigation start to the first overlay draw holding the annotations, and
  its parts: GET of the slide's annotations (+ JSON parse), building the shapes (Path2D) + the
  list + the first draw;
- frame time while panning/zooming: the viewport is moved every animation frame for --frames
  frames (pan, then zoom in 8×, pan zoomed in, zoom out) by the viewer's own API; requestAnimationFrame
  intervals (what a user sees) and the overlay's own draw time per frame, with all annotations
  shown and, in the same page right after, with the annotation layer hidden (the viewer's floor);
- a click's hit test over all annotations.
Prints one table; exits non-zero if the annotations never render.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CLASSES = [("Tumor", [200, 0, 0]), ("Stroma", [150, 200, 150]), ("Immune cells", [160, 90, 160]), ("Necrosis", [50, 50, 50]),
           ("Other", [255, 200, 0]), ("Region*", [0, 0, 180])]
SOURCE = "annotations-render-bench.geojson"


def _get(url: str):
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.loads(response.read())


def _post(url: str, body: bytes, content_type: str):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def features(n: int, width: int, height: int, seed: int = 23) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, rgb = CLASSES[i % len(CLASSES)]
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        kind = rng.random()
        if kind < 0.05:
            geometry = {"type": "Point", "coordinates": [round(cx, 2), round(cy, 2)]}
        elif kind < 0.15:
            w, h = rng.uniform(40, 300), rng.uniform(40, 300)
            x0, y0 = round(cx - w / 2, 2), round(cy - h / 2, 2)
            x1, y1 = round(cx + w / 2, 2), round(cy + h / 2, 2)
            geometry = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
        else:
            corners = rng.randint(10, 16)
            radius = rng.uniform(15, 90)
            ring = []
            for k in range(corners):
                a = 2 * math.pi * k / corners
                r = radius * rng.uniform(0.7, 1.2)
                ring.append([round(cx + r * math.cos(a), 2), round(cy + r * math.sin(a), 2)])
            ring.append(list(ring[0]))
            geometry = {"type": "Polygon", "coordinates": [ring]}
        out.append({"type": "Feature", "geometry": geometry,
                    "properties": {"objectType": "annotation", "name": f"cell {i + 1}", "classification": {"name": name, "color": rgb}}})
    return out


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = f"----eagle-bench-{os.getpid()}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/geo+json\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start_demo(folder: Path) -> tuple[subprocess.Popen, str, object]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(folder / "server.log", "w")
    env = {k: v for k, v in os.environ.items() if k not in ("EAGLE_INDEX_DATA", "EAGLE_INDEX_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "demo", "--data-dir", str(folder / "demo-data"), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 1200
    while True:
        if proc.poll() is not None:
            sys.exit(f"the demo server stopped: {(folder / 'server.log').read_text()[-2000:]}")
        try:
            if _get(f"{url}/api/v1/health").get("pid") == proc.pid:
                return proc, url, log
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("the demo server did not start")
        time.sleep(0.5)


MOTION_JS = """
async ([frames, hidden]) => {
  const root = document.querySelector('#viewer');
  const layer = root.annotationLayer;
  const v = root.eagleViewer;
  const OSD = window.OpenSeadragon;
  layer.visible = !hidden;
  v.viewport.goHome(true);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const intervals = [];
  const start = layer.drawMs.length;
  let last = performance.now();
  const quarter = Math.max(1, Math.floor(frames / 4));
  const zoomStep = Math.pow(8, 1 / quarter);
  for (let i = 0; i < frames; i += 1) {
    const phase = Math.floor(i / quarter);
    const b = v.viewport.getBounds(true);
    // animated, as a mouse drag (panBy) and the wheel (zoomBy) move it
    if (phase === 0 || phase === 2) v.viewport.panBy(new OSD.Point(b.width * 0.01 * (i % 40 < 20 ? 1 : -1), b.height * 0.006));
    else v.viewport.zoomBy(phase === 1 ? zoomStep : 1 / zoomStep);
    await new Promise((r) => requestAnimationFrame(r));
    const now = performance.now();
    intervals.push(now - last);
    last = now;
  }
  layer.visible = true;
  const draws = layer.drawMs.slice(start);
  return { intervals, draws, drawn: Number(root.dataset.annotationsDrawn) };
}
"""


RENDER_JS = """
async () => {
  // a full render of the overlay at rest (what follows each pan/zoom), rasterised (getImageData forces it), 7 times each
  const root = document.querySelector('#viewer');
  const layer = root.annotationLayer;
  const v = root.eagleViewer;
  const out = {};
  for (const [label, zoom] of [['home', 1], ['zoomed 8x', 8]]) {
    v.viewport.goHome(true);
    if (zoom !== 1) v.viewport.zoomBy(zoom, null, true);
    v.viewport.applyConstraints(true);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const times = [];
    for (let i = 0; i < 7; i += 1) {
      const t = performance.now();
      layer.invalidate();
      layer.draw();
      layer.canvas.getContext('2d').getImageData(0, 0, 1, 1);
      times.push(performance.now() - t);
      await new Promise((r) => requestAnimationFrame(r));
    }
    times.sort((a, b) => a - b);
    out[label] = { median: times[3], min: times[0], drawn: Number(root.dataset.annotationsDrawn) };
  }
  v.viewport.goHome(true);
  return out;
}
"""


def stats(values: list[float]) -> dict:
    a = sorted(values)
    if not a:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan"), "mean": float("nan"), "n": 0}
    pick = lambda q: a[min(len(a) - 1, int(round(q * (len(a) - 1))))]  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "max": a[-1], "mean": sum(a) / len(a), "n": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="annotations on the slide")
    parser.add_argument("--frames", type=int, default=240, help="animation frames per motion run")
    parser.add_argument("--url", help="an eagle-index server already running with the demo archive (default: start `eagle-index demo`)")
    parser.add_argument("--patient", default="DEMO-001")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit("/usr/bin/chromium is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="eagle-annotations-bench-"))
    proc = log = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        started = time.time()
        proc, url, log = start_demo(tmp)
        print(f"demo server up in {time.time() - started:.0f} s at {url}")
    try:
        view = _get(f"{url}/api/v1/patients/{args.patient}/viewer")
        shown = [s for s in view["slides"] if s["viewable"]]
        slide = max(shown, key=lambda s: s["selected_tiles"])  # the one the viewer opens first
        overlays = _get(f"{url}/api/v1/slides/{slide['id']}/overlays")
        width, height = overlays["dzi"]["width"], overlays["dzi"]["height"]
        name = overlays["slide"]
        old = [a["id"] for a in _get(f"{url}/api/v1/slides/{name}/annotations")["annotations"] if a.get("source") == SOURCE]
        if old:
            _post(f"{url}/api/v1/annotations/delete", json.dumps({"ids": old}).encode(), "application/json")
        data = json.dumps({"type": "FeatureCollection", "features": features(args.n, width, height)}).encode()
        body, content_type = multipart("file", SOURCE, data)
        started = time.perf_counter()
        answer = _post(f"{url}/api/v1/slides/{name}/annotations/import", body, content_type)
        import_s = time.perf_counter() - started
        total = len(_get(f"{url}/api/v1/slides/{name}/annotations")["annotations"])
        assert answer["imported"] == args.n, answer["imported"]

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.goto(f"{url}/patients/{args.patient}")
            page.wait_for_function("() => document.querySelector('#viewer')?.annotationLayer?.firstDrawAt > 0", timeout=300_000)
            first = page.evaluate("() => { const l = document.querySelector('#viewer').annotationLayer; return {first: l.firstDrawAt, ...l.timings}; }")
            page.locator("#viewer").scroll_into_view_if_needed()
            page.wait_for_function("() => { const v = document.querySelector('#viewer').eagleViewer; const i = v.world.getItemAt(0);"
                                   " return i && i.getFullyLoaded() && !v.isAnimating(); }", timeout=120_000)
            shown_run = page.evaluate(MOTION_JS, [args.frames, False])
            hidden_run = page.evaluate(MOTION_JS, [args.frames, True])
            render_ms = page.evaluate(RENDER_JS)
            hit_ms = page.evaluate("""() => { const l = document.querySelector('#viewer').annotationLayer; const it = l.items[0];
                const [x0, y0, x1, y1] = it.shape.bbox; const t = performance.now();
                for (let i = 0; i < 100; i += 1) l.hitTest({x: (x0 + x1) / 2, y: (y0 + y1) / 2});
                return (performance.now() - t) / 100; }""")
            browser.close()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            log.close()

    load = os.getloadavg()
    print(f"\nslide {name}: {width} × {height} px; {total} annotations on it ({args.n} inserted by one import: {import_s:.2f} s server-side round trip)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(f"time to first render: {first['first']:.0f} ms from navigation start "
          f"(GET + parse of the annotations {first['fetchMs']:.0f} ms; shapes + list + first draw {first['buildMs']:.0f} ms)")
    print("\n| run | frames | frame interval p50 | p95 | max | overlay draw p50 | p95 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, run in ((f"{total} annotations shown", shown_run), ("annotation layer hidden", hidden_run)):
        f, d = stats(run["intervals"]), stats(run["draws"])
        print(f"| {label} | {f['n']} | {f['p50']:.1f} ms | {f['p95']:.1f} ms | {f['max']:.1f} ms | {d['p50']:.2f} ms | {d['p95']:.2f} ms | {d['max']:.2f} ms |")
    for label, r in render_ms.items():
        print(f"full overlay render at rest, {label} view ({r['drawn']} annotations in the view + margin): median {r['median']:.1f} ms (min {r['min']:.1f})")
    print(f"\nhit test of a click over {total} annotations: {hit_ms:.3f} ms")


if __name__ == "__main__":
    main()
