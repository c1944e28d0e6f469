"""Slide viewer latency: Deep Zoom tiles over HTTP from `eagle-index serve`, cold (not in the tile
cache) and warm (cached), with 1 and 8 concurrent clients, on a 40,000 × 30,000 px generated slide.

    .venv/bin/python benchmarks/viewer_bench.py [--width 40000 --height 30000] [--cold 240] [--warm 600]

Set-up (not timed): a JPEG-tiled pyramidal TIFF (eagle_index.slides.synthetic, 0.25 µm/px,
tissue over most of it, pyramid levels 2×, 4×, ...), registered in a fresh catalog as a slide
(no embedding needed to view it); `eagle-index serve` (waitress, 8 threads) started on that
data dir as a subprocess; one DZI request opens the slide.

Timed, each request one GET over a keep-alive HTTP/1.1 connection per client (`http.client`),
body read in full:
- cold: tiles never requested before (so not in DATA/cache/dzi), drawn at random from the
  four highest-resolution Deep Zoom levels (what a pathologist zoomed in looks at), disjoint
  sets for the 1- and 8-client runs. The slide file itself is in the OS page cache (it was
  just written), as it would be for a slide being looked at.
- warm: the same tiles again (served from the disk cache), and with If-None-Match (304).
- baselines in the same process and run: `GET /api/v1/health` (HTTP + Flask floor), and the
  tile work alone in-process (`DeepZoomGenerator.get_tile` + JPEG encode, one thread).
Prints p50/p99 (ms), throughput, and the ratios to the baselines; exits non-zero if a request fails.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eagle_index.config import Settings  # noqa: E402
from eagle_index.service import EagleService  # noqa: E402
from eagle_index.slides.synthetic import write_pyramidal_tiff  # noqa: E402

MPP = 0.25


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": len(a)}


def run_clients(port: int, paths: list[str], clients: int, headers: dict | None = None) -> tuple[list[float], list[float], float]:
    """GET every path once, `clients` at a time, each followed or preceded (alternately) by a
    GET /api/v1/health on the same connection, so both see the same load; (tile ms, health ms, wall s)."""
    work: queue.Queue = queue.Queue()
    for path in paths:
        work.put(path)
    latencies: list[float] = []
    floors: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, health = [], []

        def get(path, extra):
            started = time.perf_counter()
            connection.request("GET", path, headers=extra)
            response = connection.getresponse()
            body = response.read()
            if response.status not in (200, 304) or (response.status == 200 and not body):
                failures.append(f"{path}: HTTP {response.status}")
            return (time.perf_counter() - started) * 1000

        n = 0
        while True:
            try:
                path = work.get_nowait()
            except queue.Empty:
                break
            if n % 2:
                health.append(get("/api/v1/health", {}))
                mine.append(get(path, headers or {}))
            else:
                mine.append(get(path, headers or {}))
                health.append(get("/api/v1/health", {}))
            n += 1
        connection.close()
        with lock:
            latencies.extend(mine)
            floors.extend(health)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"error: {len(failures)} requests failed, e.g. {failures[0]}")
    return latencies, floors, wall


def start_server(data: Path) -> tuple[subprocess.Popen, int, Path]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = data.parent / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "serve", "--data-dir", str(data), "--port", str(port),
                             "--models", "tiny", "--device", "cpu"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "EAGLE_INDEX_LOG": "WARNING", "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited: {log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/v1/health")
            if connection.getresponse().status == 200:
                return proc, port, log
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise SystemExit("error: the server did not start")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=40_000)
    parser.add_argument("--height", type=int, default=30_000)
    parser.add_argument("--cold", type=int, default=240, help="cold tiles per client setting")
    parser.add_argument("--warm", type=int, default=600, help="warm requests per client setting")
    parser.add_argument("--clients", default="1,8")
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="eagle-viewer-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        size_um = (args.width * MPP, args.height * MPP)
        margin = 0.05
        slide_path = tmp / "BENCH-001.tiff"
        write_pyramidal_tiff(slide_path, mpp=MPP, size_um=size_um, seed=3,
                             tissue_boxes_um=[(size_um[0] * margin, size_um[1] * margin, size_um[0] * (1 - 2 * margin), size_um[1] * (1 - 2 * margin))])
        written = time.perf_counter() - started
        data = tmp / "data"
        with EagleService(Settings(data_dir=data)) as service:
            with service.catalog.transaction() as session:
                pid = service.catalog.patient_id(session, "BENCH-001", create=True)
                slide_id = service.catalog.add_slide(session, pid, slide_path.name, "bench-fingerprint", path=str(slide_path),
                                                     status="registered", mpp=MPP, width_px=args.width, height_px=args.height)
        print(f"set-up: {args.width:,} × {args.height:,} px slide written in {written:.1f} s ({slide_path.stat().st_size / 2**20:.0f} MiB)",
              flush=True)

        # the tile work alone, in-process (a baseline measured in this run)
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        settings = Settings().viewer
        with openslide.OpenSlide(str(slide_path)) as osr:
            gen = DeepZoomGenerator(osr, settings.tile_size, settings.overlap, limit_bounds=False)
            levels = gen.level_count
            rng = np.random.default_rng(0)
            top = list(range(levels - 4, levels))
            needed = args.cold * (len(client_counts) + 1)
            addresses: set[tuple[int, int, int]] = set()
            while len(addresses) < needed:
                level = int(rng.choice(top))
                cols, rows = gen.level_tiles[level]
                addresses.add((level, int(rng.integers(0, cols)), int(rng.integers(0, rows))))
            addresses = sorted(addresses)
            rng.shuffle(addresses)
            local_set, http_sets = addresses[:args.cold], [addresses[args.cold * (i + 1):args.cold * (i + 2)] for i in range(len(client_counts))]
            local = []
            for level, col, row in local_set:
                t0 = time.perf_counter()
                buffer = io.BytesIO()
                gen.get_tile(level, (col, row)).save(buffer, format="JPEG", quality=settings.jpeg_quality)
                local.append((time.perf_counter() - t0) * 1000)
        local_p = percentiles(local)

        proc, port, log = start_server(data)
        try:
            url = f"/api/v1/slides/{slide_id}"
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("GET", f"{url}/dzi")
            descriptor = connection.getresponse().read()
            assert b"<Image" in descriptor, descriptor[:200]
            run_clients(port, ["/api/v1/health"] * 50, 1)  # warm-up
            rows = []
            for clients, tiles in zip(client_counts, http_sets):
                paths = [f"{url}/tiles/{level}/{col}_{row}.jpeg" for level, col, row in tiles]
                cold, cold_health, cold_wall = run_clients(port, paths, clients)
                warm_paths = [paths[i % len(paths)] for i in range(args.warm)]
                warm, warm_health, warm_wall = run_clients(port, warm_paths, clients)
                connection.request("GET", paths[0])
                response = connection.getresponse()
                response.read()
                etags = {"If-None-Match": response.headers["ETag"]}
                revalidate, _, _ = run_clients(port, [paths[0]] * (args.warm // 2), clients, headers=etags)
                rows.append({"clients": clients, "cold": percentiles(cold), "cold_health": percentiles(cold_health),
                             "warm": percentiles(warm), "warm_health": percentiles(warm_health), "revalidate": percentiles(revalidate),
                             "cold_wall_s": cold_wall, "warm_wall_s": warm_wall, "cold_n": len(paths), "warm_n": len(warm_paths)})
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cache_bytes = sum(p.stat().st_size for p in (data / "cache" / "dzi").rglob("*") if p.is_file())

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, openslide "
          f"{openslide.__library_version__}; slide {args.width:,} × {args.height:,} px, {levels} Deep Zoom levels, "
          f"tiles {settings.tile_size}+{settings.overlap} px JPEG q{settings.jpeg_quality}; server: eagle-index serve (waitress, 8 threads)")
    print(f"baseline, in-process get_tile + JPEG encode (1 thread, {local_p['n']} cold tiles): p50 {local_p['p50']:.2f} ms, p99 {local_p['p99']:.2f} ms")
    load = os.getloadavg()
    print(f"load average during the run (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print("health = GET /api/v1/health interleaved with the tile requests on the same connections (the HTTP + Flask floor under the same load)")
    print("| clients | cold p50 | cold p99 | health p50 (cold run) | warm p50 | warm p99 | health p50 (warm run) | 304 p50 | "
          "cold p50 / in-process | warm p50 / health p50 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['cold']['p50']:.1f} ms | {r['cold']['p99']:.1f} ms | {r['cold_health']['p50']:.2f} ms | "
              f"{r['warm']['p50']:.2f} ms | {r['warm']['p99']:.1f} ms | {r['warm_health']['p50']:.2f} ms | {r['revalidate']['p50']:.2f} ms | "
              f"{r['cold']['p50'] / local_p['p50']:.2f} | {r['warm']['p50'] / r['warm_health']['p50']:.2f} |")
    single = rows[0]
    print(f"targets (1 client): cold p50 {single['cold']['p50']:.1f} ms (≤ 50: {'met' if single['cold']['p50'] <= 50 else 'MISSED'}), "
          f"warm p50 {single['warm']['p50']:.2f} ms (≤ 5: {'met' if single['warm']['p50'] <= 5 else 'MISSED'}); "
          f"tile cache {cache_bytes / 2**20:.1f} MiB")
    print(json.dumps({"rows": rows, "in_process": local_p, "load": load}))

if __name__ == "__main__":
    main()
