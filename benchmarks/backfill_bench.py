"""Slides per hour of `eagle-index backfill --cluster local` with 1 and 2 Ray workers, same run.

    .venv/bin/python benchmarks/backfill_bench.py [--presets tiny,real] [--slides 12] [--real-slides 4]
        [--real-tiles 12] [--workdir DIR] [--weights-dir DIR]

For each preset it writes a small archive once (tiny: `--slides` generated test slides of 5
patients, 9-15 tissue tiles each; real: `--real-slides` benchmark slides of `--real-tiles`
tiles each, every tile different, see pipeline_bench.py) and runs the real command,
`python -m eagle_index backfill ARCHIVE --cluster local --workers W` into a fresh data folder,
for W = 1 and W = 2 (and, for tiny, 2 workers of 1 torch thread each). The `real` preset
uses the real-size architectures with random weights in the official layouts (2.5 GB,
written to a temporary folder and deleted afterwards unless `--weights-dir` names one).

From the command's own log it reports:
- steady slides/hour: slides / (last `job_done` - the moment every worker was ready), i.e.
  embedding and storing only, Ray start and model loading excluded;
- wall seconds of the whole command (Ray start, model loading, fingerprinting included);
- the ratio of steady slides/hour, 2 workers / 1 worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

BOX = 448.0


def tiny_archive(folder: Path, n: int) -> Path:
    from eagle_index.slides.synthetic import write_pyramidal_tiff

    table = folder / "slides.csv"
    if table.exists():
        return table
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["PATIENT,FILENAME"]
    for i in range(n):
        cols = 5 + i % 3
        write_pyramidal_tiff(folder / f"slide-{i:02d}.tiff", mpp=0.5, size_um=(cols * BOX, 5 * BOX),
                             tissue_boxes_um=[(BOX, BOX, (cols - 2) * BOX, 3 * BOX)], seed=i,
                             texture="fat" if i % 2 else "cells")
        rows.append(f"PAT-{i % 5:02d},slide-{i:02d}.tiff")
    table.write_text("\n".join(rows) + "\n")
    return table


def real_archive(folder: Path, n: int, tiles: int) -> Path:
    from pipeline_bench import write_bench_slide

    table = folder / "slides.csv"
    if table.exists():
        return table
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["PATIENT,FILENAME"]
    for i in range(n):
        write_bench_slide(folder / f"bench-{i:02d}.tiff", tiles, mpp=0.5, seed=i)
        rows.append(f"BENCH-{i % 2:02d},bench-{i:02d}.tiff")
    table.write_text("\n".join(rows) + "\n")
    return table


def _events(log: str) -> list[tuple[float, dict]]:
    found = []
    for line in log.splitlines():
        start = line.find('{"event"')
        if start < 0:
            continue
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((stamp, json.loads(line[start:])))
        except ValueError:
            continue
    return found


def run_backfill(archive: Path, table: Path, data: Path, workers: int, extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "eagle_index", "backfill", str(archive), "--slide-table", str(table), "--device", "cpu",
           "--data-dir", str(data), "--cluster", "local", "--workers", str(workers), *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"backfill failed ({done.returncode}):\n{done.stderr[-3000:]}")
    events = _events(done.stderr)
    ready = [t for t, e in events if e["event"] == "worker_ready"]
    finished = [(t, e) for t, e in events if e["event"] == "job_done"]
    steady = max(t for t, _ in finished) - max(ready[:workers])
    per_worker = {}
    store = sorted(e.get("store_seconds", 0.0) for _, e in finished)
    for _, e in finished:
        per_worker.setdefault(e["worker"], []).append(e["seconds"]["total"])
    return {"slides": len(finished), "steady_s": steady, "wall_s": wall, "slides_per_hour": len(finished) / steady * 3600,
            "s_per_slide_by_worker": {w: sum(v) / len(v) for w, v in sorted(per_worker.items())},
            "owner_store_s_median": store[len(store) // 2] if store else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,real")
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--real-slides", type=int, default=4)
    parser.add_argument("--real-tiles", type=int, default=12)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "eagle-backfill-bench")
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args()

    env = {**os.environ, "EAGLE_INDEX_LOG": "INFO", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    scratch = Path(tempfile.mkdtemp(prefix="backfill-bench-"))
    rows = []
    try:
        for preset in args.presets.split(","):
            if preset == "tiny":
                archive = args.workdir / "tiny"
                table = tiny_archive(archive, args.slides)
                configs = [(1, ["--models", "tiny"]), (2, ["--models", "tiny"]),
                           (2, ["--models", "tiny", "--threads-per-worker", "1"])]
                run_env = env
            elif preset == "real":
                from pipeline_bench import prepare_weights

                archive = args.workdir / f"real-{args.real_tiles}"
                table = real_archive(archive, args.real_slides, args.real_tiles)
                weights, _ = prepare_weights(args.weights_dir, scratch)
                configs = [(1, ["--models", "real", "--weights-dir", str(weights)]),
                           (2, ["--models", "real", "--weights-dir", str(weights)])]
                run_env = {**env, "EAGLE_INDEX_ALLOW_DIGEST_MISMATCH": "1"}
            else:
                raise SystemExit(f"unknown preset {preset!r}")
            results = []
            for workers, extra in configs:
                data = scratch / f"data-{preset}-{workers}-{len(results)}"
                result = run_backfill(archive, table, data, workers, extra, run_env)
                threads = "1" if "--threads-per-worker" in extra else "default"
                print(f"{preset}: {workers} worker(s), threads {threads}: {result['slides']} slides, steady "
                      f"{result['steady_s']:.1f} s = {result['slides_per_hour']:.0f} slides/h; wall {result['wall_s']:.1f} s; "
                      f"s/slide by worker {json.dumps({k: round(v, 2) for k, v in result['s_per_slide_by_worker'].items()})}; "
                      f"owner store median {result['owner_store_s_median']:.3f} s/slide",
                      flush=True)
                results.append((workers, threads, result))
                shutil.rmtree(data, ignore_errors=True)
            base = results[0][2]["slides_per_hour"]
            for workers, threads, result in results:
                rows.append((preset, workers, threads, result, result["slides_per_hour"] / base))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| preset | workers | torch threads / worker | slides | steady s | slides/hour | ratio vs 1 worker | wall s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for preset, workers, threads, r, ratio in rows:
        print(f"| {preset} | {workers} | {threads} | {r['slides']} | {r['steady_s']:.1f} | {r['slides_per_hour']:.0f} | "
              f"{ratio:.2f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
