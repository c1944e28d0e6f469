"""Batched search (issue 20 item 1): single queries arriving together share one FAISS call, and each
caller gets exactly the answer it gets alone.

Gathering is made deterministic with the batcher's test hook (`SearchBatcher.hold_for(n)`: every
query waits in a batch until each of the n threads still searching waits in one), not with timing:
the answers of threads that search together (a barrier, then the hook) are compared with the
answers computed one by one with batching off, for patient search (every filter of
test_search.FILTER_CASES, two vector kinds, search by stored patient and by vector) and region
search, on flat, IVF and HNSW indexes; and a counter of FAISS calls shows the gathering happened.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import clustered_vectors
from eagle_index.config import IndexSettings, Settings
from eagle_index.search import SearchFilters
from test_search import FILTER_CASES, make_catalog

INDEX_TYPES = ("flat", "ivf", "hnsw")
KINDS = (("eagle", "sig"), ("chief", "sig-chief"))
N_PATIENTS, DIM = 800, 32  # IVF: 16 lists need 16 x 39 training vectors
TILE_SIG = "tiny:batching-tiles"
THREADS = 6


def _service(tmp_path, index_type: str):
    from eagle_index.service import EagleService

    settings = Settings(data_dir=tmp_path / "data", index=IndexSettings(type=index_type, ivf_nlist=16, ivf_nprobe=4))
    return EagleService(settings)


def _together(batcher, jobs: list, threads: int = THREADS) -> list:
    """Run jobs (callables) from `threads` threads that start at once, gathered by the hook; answers in job order."""
    answers: list = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)
    batcher.hold_for(threads)

    def work(start: int) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # as the server's request threads run FAISS (a batch then gets more)
        try:
            barrier.wait()
            for i in range(start, len(jobs), threads):
                answers[i] = jobs[i]()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            batcher.leave()

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    batcher.hold_for(None)
    assert not any(t.is_alive() for t in pool), "a searching thread did not finish"
    assert not errors, errors
    return answers


def _assert_gathered(index_type: str, stats: dict) -> None:
    if index_type == "hnsw":  # never batched: FAISS walks each query's graph alone (store/batching.batchable)
        assert stats["faiss_calls"] == stats["queries"], stats
    else:  # gathered, deterministically (the hook)
        assert stats["faiss_calls"] < stats["queries"] / 2, stats


def _alone(batcher, jobs: list) -> list:
    """The answers one by one, with gathering off."""
    window = batcher.window_s
    batcher.window_s = 0.0
    try:
        return [job() for job in jobs]
    finally:
        batcher.window_s = window


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_patient_searches_together_equal_alone(tmp_path, index_type):
    with _service(tmp_path, index_type) as service:
        cats = {kind: make_catalog(service, n=N_PATIENTS, dim=DIM, seed=s, kind=kind, signature=sig)
                for s, (kind, sig) in enumerate(KINDS)}
        service.cohorts.create("nonbreast", labels=["organ=colon", "organ=lung"])
        service.searcher.exact_limit = 0  # every filter goes through the index (over-fetching)
        for kind, sig in KINDS:
            assert service.vectors.get(kind, sig).index_type == index_type
        cases = [(name, SearchFilters.build(**raw)) for name, raw, _ in FILTER_CASES]
        cases.append(("cohort", SearchFilters.build(cohorts=["nonbreast"])))
        jobs = []
        for kind, sig in KINDS:
            names = cats[kind]["names"]
            for _, filters in cases:
                for k in (1, 5, 40):
                    for q in range(0, 3 * THREADS):  # a round of THREADS queries of one kind, filter and k, twice
                        jobs.append(lambda p=names[q * 7], k=k, kind=kind, f=filters:
                                    service.search(patient=p, k=k, kind=kind, filters=f).as_dict())
            vectors = clustered_vectors(2 * THREADS, DIM, seed=99)
            for k in (3, 20):
                for v in vectors:
                    jobs.append(lambda v=v, k=k, kind=kind: service.search(vector=v, k=k, kind=kind).as_dict())
        batcher = service.vectors.batcher
        alone = _alone(batcher, jobs)
        batcher.reset_stats()
        together = _together(batcher, jobs)
        stats = batcher.stats()
        for i, (a, b) in enumerate(zip(alone, together)):
            assert a == b, (i, a, b)
        assert stats["queries"] >= len(jobs)
        _assert_gathered(index_type, stats)


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_region_searches_together_equal_alone(tmp_path, index_type, monkeypatch):
    from eagle_index import region_search
    from eagle_index.aggregation import SlideCandidates
    from eagle_index.store import tiles_repo

    monkeypatch.setattr(region_search, "EXACT_TILE_LIMIT", 0)  # filtered queries through the index too
    with _service(tmp_path, index_type) as service:
        catalog = service.catalog
        names = [f"TCGA-{('AA', 'BB', 'CC', 'DD')[i % 4]}-{i:04d}" for i in range(48)]

        def setup(session):
            out = []
            for i, name in enumerate(names):
                pid = catalog.patient_id(session, name, create=True)
                catalog.put_label(session, pid, "organ", ("colon", "lung", "breast")[i % 3], "test")
                out.append((pid, catalog.add_slide(session, pid, f"{name}-S", f"fp-{name}")))
            return out

        slides = catalog.write(setup)
        rows = []
        for i, (pid, sid) in enumerate(slides):
            tokens = clustered_vectors(25, DIM, seed=i)
            cand = SlideCandidates(f"{names[i]}-S", np.arange(25, dtype=np.int64), np.arange(25) * 448.0, np.zeros(25),
                                   np.linspace(1.0, 0.5, 25).astype(np.float32), tokens)
            rows.append((pid, [(sid, cand)]))
        catalog.write(lambda s: tiles_repo.put_patients_tiles(s, TILE_SIG, rows, 25))
        assert service.regions.index.get(TILE_SIG).index_type == index_type
        filter_cases = [SearchFilters(), SearchFilters.build(labels=["organ=lung", "organ=colon"]),
                        SearchFilters.build(exclude_same_site=True), SearchFilters.build(min_score=0.3)]
        jobs = []
        for filters in filter_cases:
            for k in (1, 8):
                for q in range(2 * THREADS):
                    query = {"patient": names[q * 3], "tile": 1 + q % 5}
                    jobs.append(lambda query=query, k=k, f=filters:
                                service.regions.search(query, k=k, per_patient=2, filters=f).as_dict())
        batcher = service.regions.index.batcher
        alone = _alone(batcher, jobs)
        batcher.reset_stats()
        together = _together(batcher, jobs)
        stats = batcher.stats()
        for i, (a, b) in enumerate(zip(alone, together)):
            assert a == b, (i, a, b)
        _assert_gathered(index_type, stats)


def test_queries_arriving_together_share_one_faiss_call(tmp_path):
    """N threads, one unfiltered query each: one FAISS call answers all N (the hook holds the batch
    until the N are in), and each answer is the one it gets alone."""
    with _service(tmp_path, "flat") as service:
        cat = make_catalog(service, n=200, dim=DIM)
        batcher = service.vectors.batcher
        jobs = [lambda p=p: service.search(patient=p, k=5).as_dict() for p in cat["names"][:8]]
        alone = _alone(batcher, jobs)
        batcher.reset_stats()
        together = _together(batcher, jobs, threads=8)
        assert batcher.stats() == {"faiss_calls": 1, "queries": 8}
        assert together == alone


def test_batching_off_searches_each_query_alone(tmp_path, monkeypatch):
    """EAGLE_INDEX_SEARCH_BATCH_MS=0: every query is its own FAISS call, even when they arrive together."""
    monkeypatch.setenv("EAGLE_INDEX_SEARCH_BATCH_MS", "0")
    settings = Settings.load(data_dir=tmp_path / "data")
    assert settings.index.search_batch_ms == 0
    from eagle_index.service import EagleService

    with EagleService(settings) as service:
        cat = make_catalog(service, n=100, dim=DIM)
        batcher = service.vectors.batcher
        assert not batcher.enabled
        barrier = threading.Barrier(4)
        answers = {}

        def work(p):
            barrier.wait()
            answers[p] = service.search(patient=p, k=5).as_dict()

        pool = [threading.Thread(target=work, args=(p,)) for p in cat["names"][:4]]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=120)
        assert batcher.stats() == {"faiss_calls": 4, "queries": 4}
        assert answers == {p: service.search(patient=p, k=5).as_dict() for p in cat["names"][:4]}


def test_bad_batch_setting_is_named(monkeypatch):
    from eagle_index.errors import InputError

    monkeypatch.setenv("EAGLE_INDEX_SEARCH_BATCH_MS", "soon")
    with pytest.raises(InputError, match="EAGLE_INDEX_SEARCH_BATCH_MS='soon'"):
        Settings.load()


def test_which_indexes_are_batched():
    """FAISS scores one query against a large flat set with another kernel than several (scores differ
    in the last bit): such indexes are not batched; small ones are, below FAISS's BLAS threshold.
    HNSW indexes are not (nothing to gain)."""
    import faiss

    from eagle_index.store.batching import DB_PARALLEL_MIN, batchable

    small = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    small.add_with_ids(np.ones((100, 8), np.float32), np.arange(100))
    assert batchable(small, 8) > 1
    assert batchable(small, 1280) == (faiss.cvar.distance_compute_blas_threshold - 1) // 1280
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT))
    assert batchable(hnsw, 8) == 1
    if faiss.omp_get_max_threads() > 1:
        large = faiss.IndexFlatIP(8)
        large.add(np.ones((max(DB_PARALLEL_MIN, faiss.omp_get_max_threads() * 1024), 8), np.float32))
        assert batchable(large, 8) == 1


def test_faiss_kernels_match_the_batching_rule():
    """A guard on the FAISS version installed: just below the size where `batchable` stops batching a
    flat set, several queries in one call score bit for bit as each alone (were FAISS to change its
    kernel choice, this fails instead of batches silently changing last bits)."""
    import faiss

    from eagle_index.store.batching import DB_PARALLEL_MIN, batchable, search_rows

    rng = np.random.default_rng(5)
    dim = 64
    base = rng.normal(size=(DB_PARALLEL_MIN - 1, dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index.add_with_ids(base, np.arange(len(base), dtype=np.int64) * 7)
    queries = rng.normal(size=(24, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    limit = batchable(index, dim)
    assert limit >= 24
    alone = [index.search(queries[i:i + 1], 15) for i in range(len(queries))]
    for size in (2, 3, 8, 24):
        scores, ids = search_rows(index, [queries[i:i + 1] for i in range(size)], 15)
        for i in range(size):
            assert np.array_equal(scores[i], alone[i][0][0]) and np.array_equal(ids[i], alone[i][1][0]), (size, i)
