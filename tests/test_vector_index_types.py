"""Every index type the product builds finds the exact neighbours, with catalog ids; small sets stay exact.

Exact brute force (numpy) is the oracle for the approximate indexes.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import clustered_vectors
from eagle_index.config import IndexSettings, Settings
from eagle_index.store.vectors import build_faiss_index, choose_index_type, configure_search, index_type_of

K = 10


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """One OpenMP thread: tiny parallel regions crawl on a busy 2-core machine, and results do not depend on it."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _normalized(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered_set():
    """20,000 database vectors and 100 held-out queries from the same 50-cluster mixture, 64-d, with scattered ids."""
    vectors = _normalized(clustered_vectors(20_100, 64, seed=3, clusters=50))
    ids = np.random.default_rng(1).choice(10**9, 20_000, replace=False).astype(np.int64) + 10**9
    return vectors[:20_000], ids, vectors[20_000:]


def _exact_top(db, ids, queries, k=K):
    scores = queries @ db.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order]


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_each_index_type_finds_the_exact_top10_with_catalog_ids(clustered_set, index_type):
    db, ids, queries = clustered_set
    index = build_faiss_index(index_type, db.shape[1], IndexSettings(), train=db)
    assert index_type_of(index) == index_type
    index.add_with_ids(db, ids)
    scores, found = index.search(queries, K)

    truth = _exact_top(db, ids, queries)
    recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
    assert recall >= (1.0 if index_type == "flat" else 0.9)
    # every returned id is a catalog id, and its score is the cosine with *that* id's vector
    row_of = {int(i): r for r, i in enumerate(ids)}
    assert set(found.ravel().tolist()) <= set(row_of)
    cosines = np.einsum("qd,qkd->qk", queries, db[[[row_of[int(i)] for i in row] for row in found]])
    np.testing.assert_allclose(scores, cosines, atol=1e-5)


def test_ivf_search_settings_apply_to_a_loaded_index(clustered_set):
    import faiss

    db, ids, _ = clustered_set
    index = build_faiss_index("ivf", db.shape[1], IndexSettings(ivf_nprobe=4, ivf_refine_k_factor=8), train=db[:5000])
    index.add_with_ids(db[:5000], ids[:5000])
    loaded = faiss.deserialize_index(faiss.serialize_index(index))
    configure_search(loaded, IndexSettings(ivf_nprobe=7, ivf_refine_k_factor=32))
    refine = faiss.downcast_index(loaded.index)
    assert refine.k_factor == 32
    assert faiss.extract_index_ivf(refine).nprobe == 7
    assert faiss.extract_index_ivf(refine).nlist == 71  # about sqrt(5000)


@pytest.mark.parametrize("n", [0, 1, 50, 1500])
def test_ivf_over_too_few_vectors_is_built_exact(n):
    db = _normalized(clustered_vectors(max(n, 1), 16, seed=n))[:n]
    index = build_faiss_index("ivf", 16, IndexSettings(), train=db if n else None)
    assert index_type_of(index) == "flat"
    if n:
        index.add_with_ids(db, np.arange(100, 100 + n, dtype=np.int64))
        _, found = index.search(db[:1], 1)
        assert found[0, 0] == 100


def test_explicit_nlist_larger_than_the_set_allows_falls_back():
    db = _normalized(clustered_vectors(5000, 16, seed=2))
    assert index_type_of(build_faiss_index("ivf", 16, IndexSettings(ivf_nlist=1024), train=db)) == "flat"
    assert index_type_of(build_faiss_index("ivf", 16, IndexSettings(ivf_nlist=64), train=db)) == "ivf"


def test_unknown_index_type_is_refused():
    with pytest.raises(ValueError, match="unknown index type"):
        build_faiss_index("lsh", 16, IndexSettings())


def test_auto_switches_to_ivf_above_the_threshold():
    settings = IndexSettings(approximate_above=1000)
    assert choose_index_type(settings, 1000) == "flat"
    assert choose_index_type(settings, 1001) == "ivf"
    assert choose_index_type(IndexSettings(type="hnsw"), 10) == "hnsw"


def _store_vectors(service, vectors, kind="eagle", signature="sig"):
    names = [f"P{i:05d}" for i in range(len(vectors))]
    def _tx(session):
        ids = [service.catalog.patient_id(session, p, create=True) for p in names]
        service.catalog.put_vectors(session, kind, signature, ids, vectors, source="test")
        return ids

    ids = service.catalog.write(_tx)
    return names, np.asarray(ids, dtype=np.int64)


@pytest.mark.parametrize("kind, count, expected", [("ivf", 30, "flat"), ("auto", 800, "ivf")])
def test_store_records_the_index_it_built_and_searches_it(tmp_path, kind, count, expected):
    from eagle_index.service import EagleService

    index_settings = IndexSettings(type=kind, approximate_above=500, ivf_nlist=16)  # 16 lists train on >= 624 vectors
    settings = Settings(data_dir=tmp_path / "data", index=index_settings)
    vectors = clustered_vectors(count, 16, seed=4, clusters=20)
    with EagleService(settings) as service:
        names, ids = _store_vectors(service, vectors)
        loaded = service.vectors.get("eagle", "sig")
        assert (loaded.index_type, loaded.ntotal) == (expected, count)
        _, meta_path = service.vectors.paths("eagle", "sig")
        assert json.loads(meta_path.read_text())["index_type"] == expected

        service.vectors.unload()  # reopen from disk
        reopened = service.vectors.get("eagle", "sig")
        assert index_type_of(reopened.index) == expected
        queries = vectors[:20]
        found, scores = service.vectors.search("eagle", "sig", queries, k=5)
        truth = _exact_top(_normalized(vectors), ids, _normalized(queries), k=5)
        recall = np.mean([len(set(f) & set(t)) / 5 for f, t in zip(found, truth)])
        assert recall >= 0.9
        assert all(f[0] == i for f, i in zip(found, ids[:20]))  # each stored vector finds itself first


def test_index_type_is_named_type_and_the_old_spelling_still_reads():
    assert IndexSettings(type="lean").type == "lean"
    assert IndexSettings(kind="hnsw").type == "hnsw"  # configs written before the rename
    assert "kind" not in IndexSettings().model_dump()


def test_the_index_type_comes_from_the_environment_and_reindex_builds_it(tmp_path, monkeypatch):
    """A user picks the index type without Python: EAGLE_INDEX_INDEX_TYPE, then `reindex --force`."""
    import subprocess
    import sys

    from eagle_index.errors import InputError
    from eagle_index.service import EagleService

    with EagleService(Settings(data_dir=tmp_path / "data")) as service:
        _store_vectors(service, clustered_vectors(40, 16, seed=5, clusters=4))
        assert service.vectors.get("eagle", "sig").index_type == "flat"
    monkeypatch.setenv("EAGLE_INDEX_INDEX_TYPE", "HNSW")
    assert Settings.load().index.type == "hnsw"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-m", "eagle_index", "reindex", "--force", "--json", "--data-dir", str(tmp_path / "data")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert {e["kind"]: e["index_type"] for e in json.loads(run.stdout)}["eagle"] == "hnsw"
    monkeypatch.setenv("EAGLE_INDEX_INDEX_TYPE", "fast")
    with pytest.raises(InputError, match="^EAGLE_INDEX_INDEX_TYPE='fast': expected one of auto, flat, ivf, hnsw, lean$"):
        Settings.load()
