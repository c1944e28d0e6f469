"""Owner store rate: slides/s the owner process stores, today's path against the new one, same run.

    .venv/bin/python benchmarks/owner_bench.py [--slides 240] [--tiles 2000] [--batch 8]
        [--store-threads 4] [--search-threads 1] [--search-interval-ms 10] [--workdir DIR]
        [--paths old,new] [--only old|new]

Issue 19 item 5 ("the owner keeps up"): an 8-GPU node at 5,000 slides/h per GPU sends about
11 slides/s to the one owner process. This feeds precomputed results of real size into a real
catalog (DuckDB file + FAISS indexes, through `EagleService.ingest_context()` as the owner does)
and times storing them:

- results: `--slides` `SlideResult`s with random arrays of the pipeline's shapes and dtypes:
  `--tiles` tiles (CTransPath features 768-d, rounded to float16 as the pipeline does, CHIEF
  raw attention), the top-25 candidates with Virchow2 class tokens (1280-d); patients have
  1-5 slides (3 on average), and a patient's slides arrive spread over the run, so most
  stores re-aggregate a patient that already has stored slides;
- signed with a `ModelIdentity` (no models are loaded: the Ray owner's case);
- "old": `store_job_result_in_writer`, today's path until this change: artifact write, then
  inside `catalog.write`: slide row, reading all of the patient's artifacts, aggregation,
  vectors, tile rows, job done; one FAISS sync per slide. One result at a time, as
  the job loop with `cluster.RayCompute` stores them;
- "new": results handed one by one to a `BatchStorer` (eagle_index/ingest/worker.py), whose
  `--store-threads` threads each take whatever is ready (up to `--batch`) into one
  `store_job_results` call (eagle_index/ingest/storing.py): artifact write, reading the
  patient's other artifacts and aggregation before the write, only rows inside it, one
  transaction and FAISS sync per batch (while one thread commits, the others write artifacts
  and aggregate; artifact writes wait on fsync, so more threads than cores help).

- "old-blas" / "new-blas": the same paths with the CHIEF pooling's matrix-vector product on the
  BLAS library's default thread count, as before `aggregation.one_blas_thread` (on this 2-core
  machine the idle second OpenBLAS thread spun after every product and took about half the
  process's CPU). `--paths old-blas,new-blas,old,new` compares all four in one run.

Jobs are queued and claimed before the clock starts. While storing, `--search-threads` threads
search (`service.search_patient`, k=10, a random patient stored so far) every
`--search-interval-ms` (10 ms: up to 100 searches/s each, as a busy server would); it
reports how many searches answered, their p50/p99/max latency, and how long the writer held
the catalog's exclusive lock per write (median, longest; searches wait for it). Process
CPU-seconds per stored slide (all threads) are printed too: on a shared machine they move
less than wall time. Each path gets a
fresh data folder under `--workdir` (deleted at the end unless given).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eagle_index import aggregation, pipeline  # noqa: E402
from eagle_index.config import Settings  # noqa: E402
from eagle_index.ingest.steps import ModelIdentity  # noqa: E402

CTRANSPATH_DIM, VIRCHOW2_DIM, TOP_K = 768, 1280, 25
KINDS = ("eagle", "chief", "mean-ctranspath")
IDENTITY = ModelIdentity({k: f"bench-{k}" for k in KINDS},
                         {k: {"signature": f"bench-{k}", "models": "random (owner_bench)"} for k in KINDS})


def make_results(n_slides: int, tiles: int, seed: int = 0) -> list[tuple[str, str, pipeline.SlideResult]]:
    """(patient, fingerprint, result) in arrival order: patients of 1-5 slides, their slides spread out."""
    rng = np.random.default_rng(seed)
    slides: list[tuple[str, str]] = []
    p = 0
    while len(slides) < n_slides:
        count = min(1 + p % 5, n_slides - len(slides))
        slides += [(f"BENCH-{p:04d}", f"BENCH-{p:04d}-DX{s}") for s in range(count)]
        p += 1
    random.Random(seed).shuffle(slides)
    cols = int(np.ceil(np.sqrt(tiles)))
    out = []
    for i, (patient, name) in enumerate(slides):
        x_um = (np.arange(tiles) % cols * 448.0).astype(np.float64)
        y_um = (np.arange(tiles) // cols * 448.0).astype(np.float64)
        scores = rng.normal(size=tiles).astype(np.float32)
        feats = rng.standard_normal((tiles, CTRANSPATH_DIM), dtype=np.float32).astype(np.float16).astype(np.float32)
        cand = aggregation.slide_candidates(name, scores, x_um, y_um, TOP_K)
        cand.class_tokens = rng.standard_normal((len(cand), VIRCHOW2_DIM), dtype=np.float32)
        result = pipeline.SlideResult(name=name, x_um=x_um, y_um=y_um, feats=feats, scores=scores, candidates=cand,
                                      tile_um=448.0, tile_px=224, mpp=0.25, mpp_source="bench", level=2, width_px=100_000,
                                      height_px=80_000, format="aperio", timings={"total": 2.27})
        out.append((patient, f"sha256:{i:08d}" + "0" * 56, result))
    return out


class WriterClock:
    """Times every function the catalog's writer runs (lock + transaction + FAISS follow)."""

    def __init__(self, catalog):
        self.spans: list[float] = []
        real = catalog.writer.run

        def run(fn):
            def timed():
                t0 = time.perf_counter()
                try:
                    return fn()
                finally:
                    self.spans.append(time.perf_counter() - t0)
            return real(timed)

        catalog.writer.run = run


class Searcher(threading.Thread):
    """Searches a random stored patient every `interval` seconds (a search that is late starts at once)."""

    def __init__(self, service, stored: list[str], stop: threading.Event, seed: int, interval: float):
        super().__init__(daemon=True)
        self.service, self.stored, self.stop, self.rng = service, stored, stop, random.Random(seed)
        self.interval = interval
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        due = time.perf_counter()
        while not self.stop.is_set():
            due += self.interval
            time.sleep(max(0.0, due - time.perf_counter()))
            if len(self.stored) < 2:
                continue
            patient = self.rng.choice(self.stored[:])
            t0 = time.perf_counter()
            try:
                self.service.search_patient(patient, k=10)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self.latencies.append(time.perf_counter() - t0)


def run_path(how: str, results, data_dir: Path, args) -> dict:
    if how.endswith("-blas"):  # the product on the library's default BLAS threads, as before one_blas_thread
        import contextlib

        real = aggregation.one_blas_thread
        aggregation.one_blas_thread = contextlib.nullcontext
        try:
            return dict(run_path(how.removesuffix("-blas"), results, data_dir, args), path=how)
        finally:
            aggregation.one_blas_thread = real
    from eagle_index.ingest.worker import BatchStorer, store_job_result_in_writer
    from eagle_index.service import EagleService

    shutil.rmtree(data_dir, ignore_errors=True)
    with EagleService(Settings(data_dir=data_dir)) as service:
        ctx = service.ingest_context()
        t0 = time.perf_counter()
        jobs = []
        for patient, fp, result in results:
            service.jobs.enqueue(fp, f"/slides/{result.name}.svs", patient)
        for patient, fp, result in results:
            job = service.jobs.claim()
            assert job is not None and job.fingerprint == fp
            jobs.append((job, result))
        queue_seconds = time.perf_counter() - t0
        clock = WriterClock(service.catalog)
        stored: list[str] = []
        stop = threading.Event()
        searchers = [Searcher(service, stored, stop, seed, args.search_interval_ms / 1e3) for seed in range(args.search_threads)]
        for s in searchers:
            s.start()
        started, cpu_started = time.perf_counter(), time.process_time()
        if how == "old":
            for job, result in jobs:
                store_job_result_in_writer(ctx, job, result, 2.27, identity=IDENTITY)
                stored.append(job.patient)
        else:  # handed over one by one, as results arrive; the storer's threads batch whatever is ready
            with BatchStorer(ctx, threads=args.store_threads, batch=args.batch) as storer:
                futures = []
                for job, result in jobs:
                    futures.append(storer.submit(job, result, 2.27, identity=IDENTITY))
                    futures[-1].add_done_callback(lambda f, p=job.patient: f.exception() is None and stored.append(p))
            failures = [f.exception() for f in futures if f.exception() is not None]
            if failures:
                raise RuntimeError(f"{len(failures)} results failed: {failures[0]}")
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        stop.set()
        for s in searchers:
            s.join()
        lat = sorted(x for s in searchers for x in s.latencies)
        errors = [e for s in searchers for e in s.errors]
        counts = {s.kind: s.count for s in service.catalog.vector_sets()}
        states = service.jobs.states([job.id for job, _ in jobs])
        writes = clock.spans
    patients = len({p for p, _, _ in results})
    assert counts == {k: patients for k in KINDS}, counts
    assert states["done"] == len(results), states
    return {
        "path": how, "slides": len(results), "seconds": seconds, "slides_per_s": len(results) / seconds,
        "cpu_ms_per_slide": 1e3 * cpu_seconds / len(results),
        "queue_seconds": queue_seconds, "writes": len(writes), "writer_seconds": sum(writes),
        "writer_max_ms": 1e3 * max(writes) if writes else 0.0, "writer_p50_ms": 1e3 * statistics.median(writes) if writes else 0.0,
        "searches": len(lat), "search_errors": errors[:3], "n_errors": len(errors),
        "p50_ms": 1e3 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "max_ms": 1e3 * lat[-1] if lat else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=240)
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8, help="results per transaction (new path)")
    parser.add_argument("--store-threads", type=int, default=4, help="threads storing batches (new path)")
    parser.add_argument("--search-threads", type=int, default=1)
    parser.add_argument("--search-interval-ms", type=float, default=10.0, help="pause between a thread's searches")
    parser.add_argument("--paths", default="old,new", help="comma-separated, in this order: old, new, old-blas, new-blas")
    parser.add_argument("--only", choices=("old", "new"), help="same as --paths old or --paths new")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="owner-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = make_results(args.slides, args.tiles)
    patients = len({p for p, _, _ in results})
    print(f"{len(results)} results of {patients} patients, {args.tiles} tiles each, made in {time.perf_counter() - t0:.1f} s; "
          f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}; load {os.getloadavg()[0]:.1f}",
          flush=True)
    rows = []
    try:
        paths = [args.only] if args.only else [p.strip() for p in args.paths.split(",") if p.strip()]
        unknown = set(paths) - {"old", "new", "old-blas", "new-blas"}
        if unknown:
            parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
        for how in paths:
            row = run_path(how, results, workdir / how, args)
            rows.append(row)
            print(f"{how}: {row['slides']} slides in {row['seconds']:.1f} s = {row['slides_per_s']:.1f} slides/s, "
                  f"{row['cpu_ms_per_slide']:.0f} CPU-ms per slide (all threads, searches included); "
                  f"{row['writes']} writes holding the writer {row['writer_seconds']:.1f} s (median {row['writer_p50_ms']:.0f} ms, longest {row['writer_max_ms']:.0f} ms); "
                  f"{row['searches']} searches answered, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                  f"max {row['max_ms']:.0f} ms, {row['n_errors']} errors {row['search_errors']}; "
                  f"(queueing {row['queue_seconds']:.1f} s, not timed); load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if len(rows) >= 2:
        by = {r["path"]: r for r in rows}
        print("\n| path | slides | s | slides/s | CPU-ms / slide | writer s | write p50 / max ms | searches | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['path']} | {r['slides']} | {r['seconds']:.1f} | {r['slides_per_s']:.1f} | {r['cpu_ms_per_slide']:.0f} | "
                  f"{r['writer_seconds']:.1f} | "
                  f"{r['writer_p50_ms']:.0f} / {r['writer_max_ms']:.0f} | {r['searches']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} |")
        for a, b in (("new", "old"), ("new", "new-blas"), ("new", "old-blas"), ("new-blas", "old-blas"), ("old", "old-blas")):
            if a in by and b in by:
                print(f"{a} / {b}: {by[a]['slides_per_s'] / by[b]['slides_per_s']:.2f}x slides/s, "
                      f"{by[b]['cpu_ms_per_slide'] / by[a]['cpu_ms_per_slide']:.2f}x less CPU per slide")
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
