"""REST API latency: `GET /api/v1/search` (top-10) against a 100,000-patient catalog over loopback,
compared with the same search called in-process on the same service, in the same run.

    .venv/bin/python benchmarks/api_bench.py [--patients 100000] [--requests 500] [--dim 1280]

Set-up (not timed): a temporary data dir; 100,000 patients with 1280-d synthetic `eagle`
vectors (a mixture of 500 Gaussian clusters, L2-normalized) and two labels each, written in
one transaction with the catalog API (`Catalog.put_vectors`; patients and labels as bulk
inserts), checkpointed; the FAISS index built by `VectorStore.sync_all` (IVF above 50,000
vectors with the product defaults). The app is `web.create_app` on that service, served by
waitress (8 threads, as `eagle-index serve` runs it) on 127.0.0.1 in this process.

Timed: `--requests` single requests, one at a time over a keep-alive HTTP/1.1 connection
(`http.client`), each for a different random catalog patient, k=10; the response is read and
parsed as JSON; the same query through `EagleService.search_patient` directly; and, as a
floor, `GET /api/v1/health` (HTTP + Flask + security hooks, no work) - interleaved query by
query, in alternating order, so load changes on a shared machine hit all three alike. After
30 warm-up calls of each. Prints p50/p90/p99 (ms) and checks both searches return the
same hits.

Concurrent mode (`--concurrency N`, e.g. 16): N client processes (spawned, one keep-alive
connection each) send `GET /api/v1/search` for random patients of a pool of `--pool` patients,
all starting together, `--requests` requests in all, to the server `eagle-index serve` runs
(`eagle_index.server.make_http_server`: waitress with its thread pool) in this process. Prints
requests/s over the whole run, p50/p90/p99 latency, errors (non-200 answers or failed
connections) and wrong answers: every answer is compared with the in-process
`EagleService.search` result for its patient in the route's shape (`{"hits": [...], "vote": null}`),
computed before the run. Exits non-zero when any answer differs (both modes).

    .venv/bin/python benchmarks/api_bench.py --concurrency 16 --requests 3000 [--data-dir DIR]

`--compare-batching` (concurrent mode) runs it twice on the same server process and catalog: with
search batching on (single queries of one index arriving together share one FAISS call,
`store/batching.py`, the default 1 ms window), then right after with it off, and prints the
ratio of the two request rates and the FAISS calls per query of each run.

`--ceiling` (concurrent mode) runs it four times on the same server process and catalog, in the order
real, ceiling, ceiling, real: "ceiling" answers the index search (`VectorStore.search`) from a memo of
the in-process answers computed before the run, so FAISS costs nothing and everything else a request
does (HTTP, Flask, the patient lookup, the query vector, naming the hits, JSON) is real. Its rate is
what one server process on this machine can reach with any index; the answers are checked as usual.

`--data-dir DIR` keeps the filled catalog in DIR and reuses it in later runs (set-up is then
skipped when DIR already holds `--patients` patients).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # FAISS's OpenMP threads must not spin on a small machine

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from eagle_index.config import Settings  # noqa: E402
from eagle_index.service import EagleService  # noqa: E402
from eagle_index.store.models import Label, Patient  # noqa: E402

SIGNATURE = "bench:eagle-v1"


def synthetic(n: int, dim: int, seed: int = 0, clusters: int = 500, chunk: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = centers[rng.integers(0, clusters, stop - start)] + 0.6 * rng.normal(size=(stop - start, dim)).astype(np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def fill(service: EagleService, n: int, dim: int) -> list[str]:
    catalog = service.catalog
    names = [f"API-{i:06d}" for i in range(n)]
    vectors = synthetic(n, dim)
    rng = np.random.default_rng(1)
    def _tx(session):
        session.execute(insert(Patient), [{"external_id": e} for e in names])
        ids = dict(session.execute(Patient.__table__.select().with_only_columns(Patient.external_id, Patient.id)).all())
        pids = [ids[e] for e in names]
        catalog.put_vectors(session, "eagle", SIGNATURE, pids, vectors, "api_bench")
        organ = rng.choice(["colon", "lung", "breast", "liver"], n)
        site = rng.choice(["AA", "BB", "CC"], n)
        session.execute(insert(Label), [{"patient_id": p, "name": "organ", "value": str(o), "source": "bench"} for p, o in zip(pids, organ)]
                        + [{"patient_id": p, "name": "site", "value": str(s), "source": "bench"} for p, s in zip(pids, site)])
        return pids

    catalog.write(_tx)
    with catalog.engine.connect() as connection:  # flush DuckDB's write-ahead log before timing
        connection.execute(text("CHECKPOINT"))
    return names


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean())}


def expected_answer(service: EagleService, patient: str, k: int) -> dict:
    """What `GET /api/v1/search?patient=&k=&kind=eagle` must answer, from the in-process service:
    {"hits": [hit JSON, ...], "vote": null} (the route's shape), through JSON as the client sees it."""
    result = service.search(patient=patient, k=k, kind="eagle")
    return json.loads(json.dumps({"hits": [h.as_dict() for h in result.hits], "vote": result.vote}))


def client_process(port: int, k: int, queries: list[str], start_at: float) -> tuple[list[tuple[str, int, float, str]], float]:
    """One client (its own process): (patient, HTTP status, latency ms, body) per request, and the
    CPU seconds this process spent sending them (the clients share the server's cores here)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    out = []
    while time.time() < start_at:
        time.sleep(0.001)
    cpu = time.process_time()
    for patient in queries:
        t0 = time.perf_counter()
        try:
            connection.request("GET", f"/api/v1/search?patient={patient}&k={k}&kind=eagle")
            response = connection.getresponse()
            body = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            body, status = repr(exc).encode(), 0
        out.append((patient, status, (time.perf_counter() - t0) * 1000, body.decode("utf-8", "replace")))
    cpu = time.process_time() - cpu
    connection.close()
    return out, cpu


def concurrent(service: EagleService, names: list[str], args, before_clients=None) -> dict:
    import logging

    from eagle_index.server import HTTP_THREADS, close_http_server, make_http_server
    from web import create_app

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N": expected here

    app = create_app(service=service, owner={"role": "serve"})
    server = make_http_server(app, "127.0.0.1", 0)
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    port = server.effective_port
    rng = np.random.default_rng(3)
    pool = [names[i] for i in rng.choice(len(names), min(args.pool, len(names)), replace=False)]
    started = time.perf_counter()
    expected = {p: expected_answer(service, p, args.k) for p in pool}
    if before_clients is not None:
        before_clients()
    print(f"in-process answers for {len(pool)} pool patients: {time.perf_counter() - started:.1f} s", flush=True)
    per_client = [list(rng.choice(pool, args.requests // args.concurrency)) for _ in range(args.concurrency)]
    warm = [list(rng.choice(pool, 5)) for _ in range(args.concurrency)]
    import resource

    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.concurrency) as workers:
        workers.starmap(client_process, [(port, args.k, w, 0.0) for w in warm])  # connect, import, warm up
        start_at = time.time() + 1.0
        results = workers.starmap(client_process, [(port, args.k, [str(q) for q in c], start_at) for c in per_client])
        wall = time.time() - start_at
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    load_after = os.getloadavg()
    server_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    # as `eagle-index serve` stops: waitress's own close() shuts its wake-up pipe first, and a request
    # thread still finishing then logs a traceback writing to it (seen once in a second `make test`)
    close_http_server(server, loop)
    flat = [r for client, _ in results for r in client]
    client_cpu = sum(cpu for _, cpu in results)
    errors = [r for r in flat if r[1] != 200]
    wrong = sum(1 for p, status, _, body in flat if status == 200 and json.loads(body) != expected[p])
    ms = percentiles([r[2] for r in flat])
    print(f"\n{len(flat)} requests by {args.concurrency} client processes, top-{args.k}, {args.patients:,} patients, {args.dim}-d; "
          f"server: waitress, {HTTP_THREADS} threads; {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}\n")
    print("| clients | requests/s | p50 ms | p90 ms | p99 ms | errors | wrong answers |\n|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.concurrency} | {len(flat) / wall:.1f} | {ms['p50']:.1f} | {ms['p90']:.1f} | {ms['p99']:.1f} | {len(errors)} | {wrong} |")
    print(f"\nserver process CPU: {server_cpu * 1000 / len(flat):.1f} ms per request "
          f"({server_cpu / wall:.2f} of the {os.cpu_count()} cores over the run); client processes CPU: "
          f"{client_cpu * 1000 / len(flat):.1f} ms per request ({client_cpu / wall:.2f} cores)")
    if errors:
        print("first error:", errors[0][1], errors[0][3][:300])
    if wrong:
        raise SystemExit(f"{wrong} of {len(flat)} answers differ from the in-process search")
    return {"rate": len(flat) / wall, "p50": ms["p50"], "p99": ms["p99"], "load": load_after[0],
            "cpu_ms": server_cpu * 1000 / len(flat), "client_cpu_ms": client_cpu * 1000 / len(flat)}


def compare_batching(service: EagleService, names: list[str], args) -> None:
    """The concurrent run with search batching on and off on the same service (issue 20 item 1), in
    the order on, off, off, on, so a load that drifts over the runs hits both modes alike; prints the
    ratio of request rates of each adjacent pair and of the totals, and server CPU per request."""
    batcher = service.vectors.batcher
    window = batcher.window_s or 0.001
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for mode in ("on", "off", "off", "on"):
        seconds = window if mode == "on" else 0.0
        batcher.window_s = seconds
        batcher.reset_stats()
        print(f"\n## search batching {mode} (window {seconds * 1000:g} ms)", flush=True)
        run = concurrent(service, names, args)
        stats = batcher.stats()
        run["per_call"] = stats["queries"] / max(stats["faiss_calls"], 1)
        runs[mode].append(run)
        print(f"FAISS calls: {stats['faiss_calls']} for {stats['queries']} queries "
              f"({run['per_call']:.2f} queries per call; includes the in-process answers)", flush=True)
    batcher.window_s = window
    on, off = runs["on"], runs["off"]
    print("\n| batching | requests/s | p50 ms | p99 ms | server CPU ms/request | queries per FAISS call | load after |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for mode, run in (("on", on[0]), ("off", off[0]), ("off", off[1]), ("on", on[1])):
        print(f"| {mode} | {run['rate']:.1f} | {run['p50']:.1f} | {run['p99']:.1f} | {run['cpu_ms']:.2f} | {run['per_call']:.2f} | "
              f"{run['load']:.1f} |")
    total_on, total_off = sum(r["rate"] for r in on), sum(r["rate"] for r in off)
    print(f"\nbatching on / off, requests/s: first pair {on[0]['rate'] / off[0]['rate']:.2f}x, second pair "
          f"{on[1]['rate'] / off[1]['rate']:.2f}x, all {total_on / total_off:.2f}x; server CPU per request "
          f"{sum(r['cpu_ms'] for r in off) / sum(r['cpu_ms'] for r in on):.2f}x less with batching")


class MemoizedSearch:
    """`VectorStore.search` answered from a memo (the --ceiling runs): filled by the real search while
    `filling`, then each repeated query costs a dict lookup. Queries not seen while filling search for real."""

    def __init__(self, vectors):
        self.real = vectors.search
        self.memo: dict = {}
        self.filling = True
        self.misses = 0

    def __call__(self, kind, signature, queries, k):
        key = (kind, signature, np.ascontiguousarray(queries, np.float32).tobytes(), int(k))
        found = self.memo.get(key)
        if found is None:
            found = self.real(kind, signature, queries, k)
            if self.filling:
                self.memo[key] = found
            else:
                self.misses += 1
        return found


def ceiling(service: EagleService, names: list[str], args) -> None:
    """The concurrent run as it is and with the index search memoized (see the module docstring), in
    the order real, ceiling, ceiling, real; prints both rates and their ratio."""
    memo = MemoizedSearch(service.vectors)
    runs: dict[str, list[dict]] = {"real": [], "ceiling": []}
    try:
        for mode in ("real", "ceiling", "ceiling", "real"):
            print(f"\n## {mode}" + (": index search answered from a memo" if mode == "ceiling" else ""), flush=True)
            if mode == "ceiling":
                service.vectors.search = memo
                memo.filling = True  # the in-process answers of `concurrent` fill it before the clients start
            runs[mode].append(concurrent(service, names, args, before_clients=lambda: setattr(memo, "filling", False)))
            vars(service.vectors).pop("search", None)  # the method again
    finally:
        vars(service.vectors).pop("search", None)
    print("\n| run | requests/s | p50 ms | p99 ms | server CPU ms/request | clients' CPU ms/request | load after |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for mode, run in (("real", runs["real"][0]), ("ceiling", runs["ceiling"][0]), ("ceiling", runs["ceiling"][1]),
                      ("real", runs["real"][1])):
        print(f"| {mode} | {run['rate']:.1f} | {run['p50']:.1f} | {run['p99']:.1f} | {run['cpu_ms']:.2f} | {run['client_cpu_ms']:.2f} | "
              f"{run['load']:.1f} |")
    real, top = sum(r["rate"] for r in runs["real"]), sum(r["rate"] for r in runs["ceiling"])
    print(f"\nceiling / real, requests/s: {top / real:.2f}x ({top / 2:.0f} against {real / 2:.0f} req/s on average); "
          f"searches the memo had not seen: {memo.misses}")


def prepared(data_dir: Path, args) -> tuple[EagleService, list[str]]:
    settings = Settings.load(data_dir=data_dir)  # the environment's index settings apply, as for `eagle-index serve`
    print(f"index settings: {settings.index}", flush=True)
    service = EagleService(settings)
    names = [f"API-{i:06d}" for i in range(args.patients)]
    stats = service.stats()
    if stats["patients"] == args.patients:
        started = time.perf_counter()
        service.vectors.sync_all()
        print(f"set-up: reusing {data_dir} ({args.patients:,} patients); index opened in {time.perf_counter() - started:.1f} s", flush=True)
        return service, names
    if stats["patients"]:
        raise SystemExit(f"{data_dir} holds {stats['patients']} patients, not {args.patients}: use another --data-dir")
    started = time.perf_counter()
    names = fill(service, args.patients, args.dim)
    filled = time.perf_counter() - started
    started = time.perf_counter()
    loaded = service.vectors.sync_all()
    indexed = time.perf_counter() - started
    print(f"set-up: {args.patients:,} patients x {args.dim}-d in {filled:.1f} s; index {loaded[0].index_type} in {indexed:.1f} s",
          flush=True)
    return service, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=0, help="client processes sending requests together (0: the sequential run)")
    parser.add_argument("--pool", type=int, default=500, help="concurrent mode: distinct query patients")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep (and reuse) the filled catalog here")
    parser.add_argument("--compare-batching", action="store_true",
                        help="concurrent mode: run with search batching on, then off right after, and print the ratio")
    parser.add_argument("--ceiling", action="store_true",
                        help="concurrent mode: also run with the index search answered from a memo (the rate without FAISS)")
    args = parser.parse_args()
    from waitress.server import create_server

    from eagle_index.server import close_http_server
    from web import create_app

    with tempfile.TemporaryDirectory(prefix="eagle-api-bench-") as tmp:
        service, names = prepared(args.data_dir or Path(tmp), args)
        with service:
            if args.concurrency and args.ceiling:
                ceiling(service, names, args)
                return
            if args.concurrency and args.compare_batching:
                compare_batching(service, names, args)
                return
            if args.concurrency:
                concurrent(service, names, args)
                return

            app = create_app(service=service, owner={"role": "serve"})
            server = create_server(app, host="127.0.0.1", port=0, threads=8, ident="eagle-index")
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            port = server.effective_port
            rng = np.random.default_rng(2)
            warm = [names[i] for i in rng.integers(0, len(names), 30)]
            queries = [names[i] for i in rng.integers(0, len(names), args.requests)]

            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

            def over_http(patient: str) -> dict:
                connection.request("GET", f"/api/v1/search?patient={patient}&k={args.k}&kind=eagle")
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    raise SystemExit(f"HTTP {response.status}: {body[:200]!r}")
                return json.loads(body)

            def in_process(patient: str):
                return service.search_patient(patient, k=args.k, kind="eagle")  # typed hits (JSON-ed below, untimed)

            def health(_patient: str) -> dict:
                connection.request("GET", "/api/v1/health")
                return json.loads(connection.getresponse().read())

            calls = {"HTTP GET /api/v1/search (waitress, loopback)": over_http,
                     "in-process EagleService.search_patient": in_process,
                     "HTTP GET /api/v1/health (HTTP + Flask floor)": health}
            for call in calls.values():
                for patient in warm:
                    call(patient)
            times = {name: [] for name in calls}
            hits = {name: [] for name in calls}
            for i, patient in enumerate(queries):  # interleaved, alternating order: load drift hits both alike
                order = list(calls) if i % 2 == 0 else list(reversed(calls))
                for name in order:
                    t0 = time.perf_counter()
                    hits[name].append(calls[name](patient))
                    times[name].append((time.perf_counter() - t0) * 1000)
            results = {name: (percentiles(times[name]), hits[name]) for name in calls}
            paired = np.asarray(times["HTTP GET /api/v1/search (waitress, loopback)"]) - np.asarray(times["in-process EagleService.search_patient"])
            connection.close()
            close_http_server(server, thread)  # as in concurrent(): no write to a closed wake-up pipe

    (http_stats, http_hits), (local_stats, local_hits), _ = results.values()
    same = sum(a == {"hits": json.loads(json.dumps([h.as_dict() for h in b])), "vote": None}
               for a, b in zip(http_hits, local_hits))
    print(f"\n{args.requests} requests, top-{args.k}, {args.patients:,} patients, {args.dim}-d; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print("| path | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---:|---:|---:|---:|")
    for name, (stats, _) in results.items():
        print(f"| {name} | {stats['p50']:.2f} | {stats['p90']:.2f} | {stats['p99']:.2f} | {stats['mean']:.2f} |")
    print(f"\nHTTP overhead: median of paired differences {np.median(paired):.2f} ms; "
          f"HTTP / in-process p50 = {http_stats['p50'] / local_stats['p50']:.2f}; identical hits: {same}/{len(queries)}")
    if same != len(queries):
        raise SystemExit(f"{len(queries) - same} of {len(queries)} HTTP answers differ from the in-process search")


if __name__ == "__main__":
    from eagle_index.errors import EagleIndexError

    try:
        main()
    except (EagleIndexError, OSError) as exc:  # a catalog to upgrade, a --data-dir that is a file: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
