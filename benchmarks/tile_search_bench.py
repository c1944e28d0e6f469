"""Region search: the tile index at archive scale (default 40,000 patients x 25 tiles = 1,000,000 tiles, 1280-d).

    .venv/bin/python benchmarks/tile_search_bench.py [--patients 40000] [--tiles 25] [--queries 300] [--k 20] [--per-patient 3]

What runs is the product's code: the index is made by `build_faiss_index` with the default
`IndexSettings` as `tile_index_settings` adjusts them (re-ranking factor 11, 24 lists searched; the same call `TileIndex.rebuild` makes; IVF + 4-bit PQ + exact re-ranking
above `approximate_above` vectors), searched one query per call with one FAISS thread, and
the hits are grouped by patient with `eagle_index.store.tile_index.group_tiles` after asking
the index for `4k + 8` tiles, as `RegionSearchService._top_tiles` does without filters.

Reported:
- build: train (k-means + PQ) and add, seconds (every core), peak RSS, serialized index size;
- latency p50/p99 (ms) of search + grouping with 1 thread, and of the exact baseline (the
  same float vectors searched exhaustively: the re-ranking store of the IVF index, so no
  second 5 GB copy) in the same process; ratio approximate/exact;
- recall@k: share of the exact grouped top-k tiles (exact scores of every tile, computed
  in batch while the data is generated, grouped with the same rule) that the index returns.

Data: the clustered 1280-d mixture of `search_bench.py` (2,000 Gaussian clusters on the unit
sphere), arranged like an archive: each patient draws 3 tissue clusters and its 25 tiles from
them. Queries are tiles of 300 held-out patients drawn the same way (never in the index).
Tiles are generated in chunks of 100,000 and never held in full.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from search_bench import ClusteredEmbeddings, lean_resident, rss_parts, warm_note  # noqa: E402

from eagle_index.config import IndexSettings  # noqa: E402
from eagle_index.store.tile_index import group_tiles, tile_index_settings  # noqa: E402
from eagle_index.store.vectors import build_faiss_index, index_type_of, ivf_list_count, pq_subquantizers  # noqa: E402

DIM = 1280
CHUNK_PATIENTS = 4_000


class ArchiveTiles(ClusteredEmbeddings):
    """Tiles of patients: each patient's tiles come from 3 of the mixture's clusters."""

    def patient_tiles(self, first_patient: int, n_patients: int, tiles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        clusters = rng.choice(len(self.weights), (n_patients, 3), p=self.weights)
        which = clusters[np.repeat(np.arange(n_patients), tiles), rng.integers(0, 3, n_patients * tiles)]
        n = len(which)
        x = rng.standard_normal((n, self.dim), dtype=np.float32)
        x *= self.isotropic
        x += rng.standard_normal((n, self.within_rank), dtype=np.float32) @ self.within
        x *= self.spread[which][:, None]
        x += self.centers[which]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        patients = np.repeat(np.arange(first_patient, first_patient + n_patients, dtype=np.int64), tiles)
        return x, patients

    def chunks(self, n_patients: int, tiles: int):
        for start in range(0, n_patients, CHUNK_PATIENTS):
            size = min(CHUNK_PATIENTS, n_patients - start)
            x, patients = self.patient_tiles(start + 1, size, tiles, seed=7_000_003 + start // CHUNK_PATIENTS)
            ids = np.arange(start * tiles + 1, (start + size) * tiles + 1, dtype=np.int64)
            yield ids, patients, x


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=40_000)
    parser.add_argument("--tiles", type=int, default=25, help="tiles per patient")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=20, help="tiles returned")
    parser.add_argument("--per-patient", type=int, default=3)
    parser.add_argument("--k-factor", type=int, help="override IndexSettings.ivf_refine_k_factor (lean: lean_refine_k_factor)")
    parser.add_argument("--warm", action="store_true", help="with --type lean: read the refine file into memory "
                        "(LeanIndex.warm) after reloading, before the queries")
    parser.add_argument("--nprobe", type=int, help="override IndexSettings.ivf_nprobe")
    parser.add_argument("--type", choices=("auto", "lean"), default="auto",
                        help="lean: the memory-lean index (PQ codes in RAM, int16 refine file mapped from --workdir), "
                             "saved and reloaded so its resident bytes per tile (RssAnon delta of the load) are measured")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where the lean index files go")
    args = parser.parse_args()

    import faiss

    args.workdir.mkdir(parents=True, exist_ok=True)  # a new --workdir is made, not a traceback
    settings = tile_index_settings(IndexSettings())
    updates = {k: v for k, v in {"ivf_refine_k_factor": args.k_factor, "lean_refine_k_factor": args.k_factor,
                                 "ivf_nprobe": args.nprobe}.items() if v}
    settings = settings.model_copy(update=updates)
    n = args.patients * args.tiles
    data = ArchiveTiles()
    queries, _ = data.patient_tiles(10**9, args.queries, 1, seed=99)
    k, want = args.k, 4 * args.k + 8

    print(f"tiles {n:,} ({args.patients:,} patients x {args.tiles}), dim {DIM}, queries {args.queries}, k {k}, per-patient {args.per_patient}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, faiss {faiss.__version__}, "
          f"load {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")

    index_type = "lean" if args.type == "lean" else "ivf" if n > settings.approximate_above else "flat"
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    first = next(data.chunks(args.patients, args.tiles))
    t0 = time.perf_counter()
    index = build_faiss_index(index_type, DIM, settings, train=first[2], count=n, store_dir=args.workdir, stem=f"tiles-{n}")
    train_s = time.perf_counter() - t0
    del first
    built = index_type_of(index)
    inner = index.base if built == "lean" else faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        flat = faiss.downcast_index(inner.refine_index)
        flat.codes.resize(n * flat.code_size)  # reserve once (no doubling growth while adding chunks)
        flat.codes.resize(0)
    # exact ground truth while adding: every query's best `pool` tiles by exact cosine
    pool = max(want, 200)
    best_scores = np.full((args.queries, 0), -np.inf, np.float32)
    best_ids = np.zeros((args.queries, 0), np.int64)
    patient_of = np.zeros(n + 1, np.int64)
    add_s = truth_s = 0.0
    for ids, patients, x in data.chunks(args.patients, args.tiles):
        t0 = time.perf_counter()
        index.add_with_ids(x, ids)
        add_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        patient_of[ids] = patients
        sims = queries @ x.T
        scores = np.concatenate([best_scores, sims], axis=1)
        cand = np.concatenate([best_ids, np.broadcast_to(ids, sims.shape)], axis=1)
        top = np.argpartition(-scores, pool - 1, axis=1)[:, :pool]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(cand, top, 1)
        truth_s += time.perf_counter() - t0
    print(f"built {built}: train {train_s:.1f} s, add {add_s:.1f} s (exact truth {truth_s:.1f} s), peak RSS {_rss_gib():.2f} GiB")
    if built == "ivf":
        m = pq_subquantizers(DIM, settings.ivf_pq_dims_per_code)
        print(f"  IVF{ivf_list_count(settings, n)},PQ{m}x4fsr,RFlat nprobe={settings.ivf_nprobe} k_factor={settings.ivf_refine_k_factor}")
    refine_path = None
    if built == "lean":
        m = pq_subquantizers(DIM, settings.ivf_pq_dims_per_code)
        print(f"  IVF{ivf_list_count(settings, n)},PQ{m}x4fsr + int16 refine file (mmap) nprobe={settings.ivf_nprobe} "
              f"k_factor={settings.lean_refine_k_factor}")
        refine_path = index.refine_path
        index, anon_delta, (index_bytes, refine_bytes) = lean_resident(index, args.workdir, f"tiles-{n}")
        index_mib = (index_bytes + refine_bytes) / 2**20
        print(f"resident after load (RssAnon delta) {anon_delta / 2**20:,.1f} MiB = {anon_delta / n:.1f} bytes/tile; "
              f"index file {index_bytes / n:.1f} B/tile, int16 refine file {refine_bytes / n:.0f} B/tile (mapped)", flush=True)
        if args.warm:
            print(f"refine file {warm_note(index)}", flush=True)
    else:
        fd, tmp = tempfile.mkstemp(suffix=".faiss")
        os.close(fd)
        faiss.write_index(index, tmp)
        index_mib = os.path.getsize(tmp) / 2**20
        os.unlink(tmp)
    file0 = rss_parts()[1]

    faiss.omp_set_num_threads(1)
    exact_groups = [group_tiles(best_ids[q], best_scores[q], patient_of[best_ids[q]], k, args.per_patient)
                    for q in range(args.queries)]

    def approx(q):
        scores, ids = index.search(queries[q:q + 1], want)
        ids, scores = ids[0], scores[0]
        valid = ids >= 0
        return group_tiles(ids[valid], scores[valid], patient_of[ids[valid]], k, args.per_patient)

    for q in range(min(10, args.queries)):
        approx(q)
    lat, recalls, found_patients = [], [], []
    for q in range(args.queries):
        t0 = time.perf_counter()
        groups = approx(q)
        lat.append(time.perf_counter() - t0)
        got = {t for _, _, tiles in groups for t, _ in tiles}
        truth = {t for _, _, tiles in exact_groups[q] for t, _ in tiles}
        recalls.append(len(got & truth) / max(len(truth), 1))
        found_patients.append(len(groups))
    p50, p99 = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
    if built == "lean":
        print(f"refine pages touched by the queries (RssFile delta, page cache) {(rss_parts()[1] - file0) / 2**20:,.1f} MiB")
        again = []
        for q in range(args.queries):  # the same queries again: their refine rows are mapped in now
            t0 = time.perf_counter()
            approx(q)
            again.append(time.perf_counter() - t0)
        print(f"second pass over the same queries (refine rows mapped): p50 {np.percentile(again, 50) * 1e3:.2f} ms, "
              f"p99 {np.percentile(again, 99) * 1e3:.2f} ms; load {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
        print(f"search + group (1 thread): p50 {p50:.2f} ms, p99 {p99:.2f} ms; recall@{k} {np.mean(recalls):.3f} "
              f"(min {np.min(recalls):.2f}); {np.mean(found_patients):.1f} patients per answer; "
              f"load {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
        print(f"| {n:,} | lean | {train_s:.1f} | {add_s:.1f} | {_rss_gib():.1f} | {index_mib:,.0f} | {p50:.2f} | {p99:.2f} | "
              f"n/a | {np.mean(recalls):.3f} |")
        del index
        for path in (args.workdir / f"tiles-{n}.lean", refine_path):
            path.unlink(missing_ok=True)
        return

    exact_index = faiss.downcast_index(inner.refine_index) if isinstance(inner, faiss.IndexRefine) else inner
    exact_lat = []
    n_exact = min(30, args.queries)
    for q in range(n_exact):
        t0 = time.perf_counter()
        exact_index.search(queries[q:q + 1], want)
        exact_lat.append(time.perf_counter() - t0)
    e50, e99 = np.percentile(exact_lat, 50) * 1e3, np.percentile(exact_lat, 99) * 1e3
    print(f"index {index_mib:,.0f} MiB; peak RSS {_rss_gib():.2f} GiB")
    print(f"search + group (1 thread): p50 {p50:.2f} ms, p99 {p99:.2f} ms; recall@{k} {np.mean(recalls):.3f} "
          f"(min {np.min(recalls):.2f}); {np.mean(found_patients):.1f} patients per answer")
    print(f"exact baseline (same vectors, exhaustive, {n_exact} queries): p50 {e50:.2f} ms, p99 {e99:.2f} ms; "
          f"ratio approximate/exact p50 {p50 / e50:.4f}")
    print(f"| {n:,} | {built} | {train_s:.1f} | {add_s:.1f} | {_rss_gib():.1f} | {index_mib:,.0f} | {p50:.2f} | {p99:.2f} | "
          f"{e50:.1f} | {np.mean(recalls):.3f} |")


if __name__ == "__main__":
    main()
