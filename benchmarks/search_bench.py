"""Search: exact (flat) vs approximate (IVF, HNSW) FAISS indexes on clustered 1280-d vectors.

    .venv/bin/python benchmarks/search_bench.py [--sizes 10000,100000,1000000] [--queries 300] [--threads 1,2]

Every index is made by `eagle_index.store.vectors.build_faiss_index` with the product's
`IndexSettings` defaults (the same code `VectorStore.rebuild` runs), filled with catalog-style
int64 ids through `add_with_ids`, and searched one query per call (top-10), as the service
does. For each size it reports:

- build: train (k-means + PQ, inside `build_faiss_index`) and add, in seconds, with every core;
- single-query p50/p99 latency in ms for each `--threads` value (`faiss.omp_set_num_threads`);
- recall@10: share of the exact top-10 (IndexFlatIP, batch search) that the index returns;
- index size: bytes of the serialized index (`faiss.write_index` to a temp file) - what it
  holds in memory, give or take allocator slack.

`--concurrency N` (issue 20 item 1) also searches each index from N threads at once (each
with one OpenMP thread, as the server's HTTP threads run FAISS), every query a single-row search
through `store/batching.SearchBatcher` as `DerivedIndex.search_loaded` makes it: with gathering
on (`--batch-ms`, default 1) and off, in the order on, off, off, on in the same process; it
prints queries/s, latency, queries per FAISS call, the on/off ratio, and checks that every
answer (ids and scores) equals the one the query gets alone.

Data: a mixture of 2,000 Gaussian clusters (Pareto-distributed sizes) in 1280-d - a shared
mean direction, cluster centres on a 128-d subspace, within-cluster spread along a shared
64-d subspace plus isotropic noise, the spread varying 4x between clusters - L2-normalized.
Queries are held-out draws from the same mixture, never database members. Vectors are
generated in chunks of 100,000 (deterministically, so each index sees the same set) and
never held in full; only one index lives at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eagle_index.config import IndexSettings  # noqa: E402
from eagle_index.store.vectors import build_faiss_index, index_type_of, ivf_list_count, pq_subquantizers  # noqa: E402

DIM = 1280
CHUNK = 100_000
K = 10


class ClusteredEmbeddings:
    """A fixed mixture of Gaussian clusters on the unit sphere; `sample(n, seed)` draws from it."""

    def __init__(self, dim: int = DIM, clusters: int = 2000, seed: int = 0, center_rank: int = 128, within_rank: int = 64,
                 isotropic: float = 0.015):
        rng = np.random.default_rng(seed)
        mean = rng.standard_normal(dim)
        mean /= np.linalg.norm(mean)
        center_basis = np.linalg.qr(rng.standard_normal((dim, center_rank)))[0].T
        centers = (rng.standard_normal((clusters, center_rank)) / np.sqrt(1.0 + np.arange(center_rank) / 8.0)) @ center_basis
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        self.centers = (mean + 0.9 * centers).astype(np.float32)
        within_basis = np.linalg.qr(rng.standard_normal((dim, within_rank)))[0].T
        spectrum = 1.0 / np.sqrt(1.0 + np.arange(within_rank) / 4.0)
        self.within = (within_basis * (0.6 * spectrum / np.linalg.norm(spectrum))[:, None]).astype(np.float32)
        self.spread = np.exp(rng.uniform(np.log(0.3), np.log(1.2), clusters)).astype(np.float32)
        weights = rng.pareto(1.5, clusters) + 1.0
        self.weights = weights / weights.sum()
        self.dim, self.within_rank, self.isotropic = dim, within_rank, isotropic

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        cluster = rng.choice(len(self.weights), n, p=self.weights)
        x = rng.standard_normal((n, self.dim), dtype=np.float32)
        x *= self.isotropic
        x += rng.standard_normal((n, self.within_rank), dtype=np.float32) @ self.within
        x *= self.spread[cluster][:, None]
        x += self.centers[cluster]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self, n: int, seed: int):
        """(ids, vectors) in chunks; the same seed gives the same vectors. Ids are 1-based like catalog ids."""
        for start in range(0, n, CHUNK):
            size = min(CHUNK, n - start)
            yield np.arange(start + 1, start + size + 1, dtype=np.int64), self.sample(size, seed * 1_000_003 + start // CHUNK)


@dataclass
class Result:
    size: int
    index_type: str
    params: str
    train_s: float
    add_s: float
    latency_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # threads -> (p50, p99)
    recall: float = float("nan")
    index_mb: float = float("nan")


def _reserve_flat_storage(index, n: int) -> None:
    """Size the float storage of a flat (or re-ranking flat) index once, so chunked adds do not
    grow it by doubling (a transient 1.5-2x of 5 GB at 1M). `rebuild` adds in one call and needs none."""
    import faiss

    inner = faiss.downcast_index(index.index)
    flat = faiss.downcast_index(inner.refine_index) if isinstance(inner, faiss.IndexRefine) else inner
    if isinstance(flat, faiss.IndexFlatCodes) and flat.ntotal == 0:
        flat.codes.resize(n * flat.code_size)  # std::vector keeps this capacity ...
        flat.codes.resize(0)  # ... after shrinking back to empty


def _params(index_type: str, settings: IndexSettings, n: int) -> str:
    if index_type == "ivf":
        m = pq_subquantizers(DIM, settings.ivf_pq_dims_per_code)
        return (f"IVF{ivf_list_count(settings, n)},PQ{m}x4fsr,RFlat nprobe={settings.ivf_nprobe} "
                f"k_factor={settings.ivf_refine_k_factor}")
    if index_type == "hnsw":
        return f"HNSW{settings.hnsw_m},Flat efC={settings.hnsw_ef_construction} efS={settings.hnsw_ef_search}"
    return "IndexFlatIP"


def _index_mb(index, workdir: Path) -> float:
    import faiss

    fd, tmp = tempfile.mkstemp(suffix=".faiss", dir=workdir)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        return os.path.getsize(tmp) / 2**20
    finally:
        os.unlink(tmp)


def build(index_type: str, data: ClusteredEmbeddings, n: int, settings: IndexSettings, build_threads: int):
    import faiss

    faiss.omp_set_num_threads(build_threads)
    # IVF trains on a sample of the set it indexes, like `rebuild`: here the first chunk (rows are i.i.d.)
    train = next(data.chunks(n, seed=1))[1] if index_type == "ivf" else None
    t0 = time.perf_counter()
    index = build_faiss_index(index_type, DIM, settings, train=train, count=n)
    train_s = time.perf_counter() - t0
    del train
    if index_type_of(index) != index_type:  # IVF over too few vectors to train is built flat
        return None, None
    _reserve_flat_storage(index, n)
    add_s = 0.0
    for ids, vectors in data.chunks(n, seed=1):
        t0 = time.perf_counter()
        index.add_with_ids(vectors, ids)
        add_s += time.perf_counter() - t0
    return index, Result(n, index_type, _params(index_type, settings, n), train_s, add_s)


def measure(index, result: Result, queries: np.ndarray, truth: np.ndarray | None, threads: list[int], workdir: Path):
    """Single-query latency for each thread count, recall@10 (from the first thread count's answers), size."""
    import faiss

    for t in threads:
        faiss.omp_set_num_threads(t)
        for q in queries[:10]:  # warm-up
            index.search(q[None], K)
        latencies, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, ids = index.search(q[None], K)
            latencies.append(time.perf_counter() - t0)
            found.append(ids[0])
        result.latency_ms[t] = (float(np.percentile(latencies, 50) * 1e3), float(np.percentile(latencies, 99) * 1e3))
        if t == threads[0]:
            answers = np.stack(found)
    if truth is not None:
        result.recall = float(np.mean([len(set(a) & set(g)) / K for a, g in zip(answers, truth)]))
    result.index_mb = _index_mb(index, workdir)


def concurrent_runs(index, queries: np.ndarray, clients: int, batch_ms: float, label: str) -> list[str]:
    """Single-row searches from `clients` threads at once, gathering on / off / off / on; table rows."""
    import threading

    import faiss

    from eagle_index.store.batching import SearchBatcher, batchable

    limit = batchable(index, DIM)
    alone = [index.search(q[None], K) for q in queries]
    rows = []
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for mode in ("on", "off", "off", "on"):
        batcher = SearchBatcher(batch_ms / 1000 if mode == "on" else 0.0)
        latencies: list[float] = []
        answers: dict[int, tuple] = {}
        barrier = threading.Barrier(clients + 1)

        def client(start: int) -> None:
            faiss.omp_set_num_threads(1)
            barrier.wait()
            for i in range(start, len(queries), clients):
                t0 = time.perf_counter()
                answers[i] = batcher.search(index, np.ascontiguousarray(queries[i:i + 1]), K, limit)
                latencies.append(time.perf_counter() - t0)

        pool = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        wall = time.perf_counter() - t0
        wrong = sum(not (np.array_equal(answers[i][0], alone[i][0]) and np.array_equal(answers[i][1], alone[i][1]))
                    for i in range(len(queries)))
        stats = batcher.stats()
        rate = len(queries) / wall
        rates[mode].append(rate)
        rows.append(f"| {label} | {clients} | {mode} | {rate:.0f} | {np.percentile(latencies, 50) * 1e3:.2f} | "
                    f"{np.percentile(latencies, 99) * 1e3:.2f} | {stats['queries'] / max(stats['faiss_calls'], 1):.2f} | "
                    f"{wrong} | {_load()} |")
    rows.append(f"| {label} | {clients} | on / off | {sum(rates['on']) / sum(rates['off']):.2f}x | | | | | |")
    return rows


def rss_parts() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process now (/proc/self/status RssAnon, RssFile)."""
    parts = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            name, value = line.split(":", 1)
            parts[name] = int(value.split()[0]) * 1024
    return parts.get("RssAnon", 0), parts.get("RssFile", 0)


def lean_resident(index, workdir: Path, stem: str):
    """Save a lean index, drop it, read it back: (reloaded index, RssAnon delta of the load, file bytes
    (index file, refine file)). The delta is what the loaded index holds in RAM; the refine rows
    are mapped, not read (RssFile grows only as searches touch pages, and those are page cache)."""
    import gc

    from eagle_index.store import rerank
    from eagle_index.store.lean_index import LeanIndex

    path = workdir / f"{stem}.lean"
    index.write(path)
    k_factor, nprobe = index.k_factor, index.base.nprobe
    refine_bytes = index.refine_path.stat().st_size
    del index
    gc.collect()
    anon0, _ = rss_parts()
    loaded = LeanIndex.read(path, k_factor)
    loaded.base.nprobe = nprobe
    anon1, _ = rss_parts()
    rerank.prepare()  # as a server's open does (derived_index.warm_in_background): no query pays the compile
    return loaded, anon1 - anon0, (path.stat().st_size, refine_bytes)


def warm_note(index) -> str:
    """`--warm`: read a reloaded lean index's refine file in (LeanIndex.warm), as a server does at open;
    the line saying how much and how long."""
    t0 = time.perf_counter()
    touched = index.warm()
    return f"warmed (LeanIndex.warm: {touched / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s)"


def lean_run(n: int, data: "ClusteredEmbeddings", queries: np.ndarray, settings: IndexSettings, threads: list[int],
             workdir: Path, warm: bool = False) -> None:
    """`--types lean --streamed-truth`: build the lean index in chunks with the exact top-10 kept while
    adding (no float copy in RAM at all), reload it from its files and report resident bytes per vector."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    train = next(data.chunks(n, seed=1))[1]
    t0 = time.perf_counter()
    index = build_faiss_index("lean", DIM, settings, train=train, count=n, store_dir=workdir, stem=f"bench-{n}")
    train_s = time.perf_counter() - t0
    del train
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    add_s = 0.0
    for ids, vectors in data.chunks(n, seed=1):
        t0 = time.perf_counter()
        index.add_with_ids(vectors, ids)
        add_s += time.perf_counter() - t0
        sims = queries @ vectors.T
        scores = np.concatenate([best_s, sims], 1)
        cand = np.concatenate([best_i, np.broadcast_to(ids, sims.shape)], 1)
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(scores, top, 1), np.take_along_axis(cand, top, 1)
    order = np.argsort(-best_s, axis=1)
    truth = np.take_along_axis(best_i, order, 1)
    print(f"N={n:,} lean: train {train_s:.1f} s, add {add_s:.1f} s; load average {_load()}", flush=True)
    refine_path = index.refine_path
    index, anon_delta, (index_bytes, refine_bytes) = lean_resident(index, workdir, f"bench-{n}")
    m = pq_subquantizers(DIM, settings.ivf_pq_dims_per_code)
    result = Result(n, "lean", f"IVF{ivf_list_count(settings, n)},PQ{m}x4fsr + int16 refine file (mmap{', warmed' if warm else ''}) "
                    f"nprobe={settings.ivf_nprobe} k_factor={settings.lean_refine_k_factor}", train_s, add_s)
    print(f"N={n:,} lean: refine file {warm_note(index) if warm else 'not warmed (pages fault in as queries touch them)'}", flush=True)
    file0 = rss_parts()[1]
    for t in threads:
        faiss.omp_set_num_threads(t)
        for q in queries[:10]:
            index.search(q[None], K)
        latencies, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, ids = index.search(q[None], K)
            latencies.append(time.perf_counter() - t0)
            found.append(ids[0])
        result.latency_ms[t] = (float(np.percentile(latencies, 50) * 1e3), float(np.percentile(latencies, 99) * 1e3))
        if t == threads[0]:
            result.recall = float(np.mean([len(set(a) & set(g)) / K for a, g in zip(found, truth)]))
            top1 = float(np.mean([a[0] == g[0] for a, g in zip(found, truth)]))
    file_touched = rss_parts()[1] - file0
    result.index_mb = (index_bytes + refine_bytes) / 2**20
    print(f"N={n:,} lean: resident after load (RssAnon delta) {anon_delta / 2**20:,.1f} MiB = {anon_delta / n:.1f} bytes/vector; "
          f"index file {index_bytes / n:.1f} B/vector, int16 refine file {refine_bytes / n:.0f} B/vector (mapped); "
          f"refine pages touched by {len(queries) * len(threads)} queries (RssFile delta, page cache) {file_touched / 2**20:,.1f} MiB", flush=True)
    print(f"N={n:,} lean: p50 {result.latency_ms[threads[0]][0]:.2f} ms, p99 {result.latency_ms[threads[0]][1]:.2f} ms "
          f"({threads[0]}t), recall@10 {result.recall:.3f}, top-1 exact {top1:.3f}; load average {_load()}", flush=True)
    print(_row(result, [t for t in threads]), flush=True)
    del index
    for path in (workdir / f"bench-{n}.lean", refine_path):
        path.unlink(missing_ok=True)


def _load() -> str:
    """1/5/15-minute load averages: other work on the machine shows up in the latencies."""
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _row(r: Result, threads: list[int]) -> str:
    lat = " | ".join(f"{r.latency_ms[t][0]:.2f} | {r.latency_ms[t][1]:.2f}" for t in threads)
    return (f"| {r.size:,} | {r.index_type} | {r.params} | {r.train_s:.1f} | {r.add_s:.1f} | {lat} | "
            f"{r.recall:.3f} | {r.index_mb:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated database sizes")
    parser.add_argument("--queries", type=int, default=300, help="held-out single queries per index")
    parser.add_argument("--threads", default="1,2", help="comma-separated OpenMP thread counts for the latency runs")
    parser.add_argument("--types", default="flat,ivf,hnsw", help="index types besides the exact baseline")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this size (its build is slow)")
    parser.add_argument("--nprobe", type=int, help="override IndexSettings.ivf_nprobe")
    parser.add_argument("--k-factor", type=int, help="override IndexSettings.ivf_refine_k_factor (lean: lean_refine_k_factor)")
    parser.add_argument("--warm", action="store_true", help="with --types lean: read the refine file into memory "
                        "(LeanIndex.warm) after reloading, before the queries")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where index sizes are measured")
    parser.add_argument("--concurrency", type=int, default=0, help="also search from this many threads at once, batching on/off")
    parser.add_argument("--batch-ms", type=float, default=1.0, help="the gathering window of --concurrency's 'on' runs")
    parser.add_argument("--concurrent-types", default="flat,ivf,hnsw", help="index types --concurrency runs on")
    parser.add_argument("--streamed-truth", action="store_true",
                        help="with --types lean: no flat baseline index; the exact top-10 is kept while the lean index is built")
    args = parser.parse_args()

    import faiss

    args.workdir.mkdir(parents=True, exist_ok=True)  # a new --workdir is made, not a traceback
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    types = [t for t in args.types.split(",") if t != "flat"]
    overrides = {"ivf_nprobe": args.nprobe, "ivf_refine_k_factor": args.k_factor, "lean_refine_k_factor": args.k_factor}
    settings = IndexSettings(**{k: v for k, v in overrides.items() if v is not None})
    build_threads = os.cpu_count() or 1
    data = ClusteredEmbeddings()
    queries = data.sample(args.queries, seed=999)

    print(f"faiss {faiss.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} cores; builds with {build_threads} threads")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; settings: {settings!r}", flush=True)
    print(f"load average at start: {_load()}\n", flush=True)
    results: list[Result] = []
    concurrent_rows: list[str] = []
    if args.streamed_truth:
        for n in sizes:
            lean_run(n, data, queries, settings, threads, args.workdir, args.warm)
        print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        return
    for n in sizes:
        started = time.perf_counter()
        index, exact = build("flat", data, n, settings, build_threads)
        faiss.omp_set_num_threads(build_threads)
        scores, truth = index.search(queries, K)
        measure(index, exact, queries, truth, threads, args.workdir)
        if args.concurrency and "flat" in args.concurrent_types.split(","):
            concurrent_rows += concurrent_runs(index, queries, args.concurrency, args.batch_ms, f"{n:,} flat")
        del index
        results.append(exact)
        print(f"N={n:,}: exact neighbour cosine, median over queries: top-1 {np.median(scores[:, 0]):.3f}, "
              f"top-10 {np.median(scores[:, -1]):.3f}", flush=True)
        for index_type in types:
            if index_type == "hnsw" and n > args.hnsw_max:
                continue
            index, result = build(index_type, data, n, settings, build_threads)
            if index is None:
                print(f"N={n:,} {index_type}: too few vectors to train, the product builds it exact; skipped", flush=True)
                continue
            measure(index, result, queries, truth, threads, args.workdir)
            if args.concurrency and index_type in args.concurrent_types.split(","):
                concurrent_rows += concurrent_runs(index, queries, args.concurrency, args.batch_ms, f"{n:,} {index_type}")
            del index
            results.append(result)
            print(f"N={n:,} {index_type}: built in {result.train_s + result.add_s:.1f} s, "
                  f"p50 {result.latency_ms[threads[0]][0]:.2f} ms, recall@10 {result.recall:.3f}", flush=True)
        print(f"N={n:,} done in {time.perf_counter() - started:.0f} s; load average {_load()}\n", flush=True)

    lat_head = " | ".join(f"p50 ms ({t}t) | p99 ms ({t}t)" for t in threads)
    print(f"| vectors | index | parameters | train s | add s | {lat_head} | recall@10 | index MiB |")
    print("|---:|---|---|---:|---:|" + "---:|---:|" * len(threads) + "---:|---:|")
    for r in results:
        print(_row(r, threads))
    print()
    for r in results:
        if r.index_type == "flat":
            base = r
            continue
        ratios = ", ".join(f"{r.latency_ms[t][0] / base.latency_ms[t][0]:.4f} ({t}t)" for t in threads)
        print(f"N={r.size:,}: {r.index_type} p50 / exact p50 = {ratios}; "
              f"speed-up {base.latency_ms[threads[0]][0] / r.latency_ms[threads[0]][0]:.0f}x ({threads[0]}t)")
    if concurrent_rows:
        print(f"\nsingle-row searches from {args.concurrency} threads at once (1 OpenMP thread each), "
              f"gathering window {args.batch_ms:g} ms; runs in the order on, off, off, on")
        print("| index | threads | batching | queries/s | p50 ms | p99 ms | queries per FAISS call | answers differing from alone | load |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---|")
        print("\n".join(concurrent_rows))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
