"""The FAISS index is derived: refused bad vectors, rebuilt when missing, stale or corrupt."""

import json

import numpy as np
import pytest

from conftest import clustered_vectors
from eagle_index.errors import InputError


def _put(service, n=20, dim=16, kind="eagle", signature="sig", seed=0, names=None):
    vectors = clustered_vectors(n, dim, seed)
    names = names or [f"P{i:03d}" for i in range(n)]
    def _tx(session):
        ids = [service.catalog.patient_id(session, p, create=True) for p in names]
        service.catalog.put_vectors(session, kind, signature, ids, vectors, source="test")
        return ids

    service.catalog.write(_tx)
    return names, vectors


def _brute_force(vectors, q, k):
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = normed @ normed[q]
    scores[q] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


def test_search_matches_brute_force_and_never_returns_self(service):
    names, vectors = _put(service)
    hits = service.search_patient("P005", k=5, kind="eagle")
    order, scores = _brute_force(vectors, 5, 5)
    assert [h.patient for h in hits] == [names[i] for i in order]
    np.testing.assert_allclose([h.score for h in hits], scores, rtol=1e-5)
    assert "P005" not in [h.patient for h in hits]


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones((2, 15), np.float32), "dimension 15, expected 16"),
        (np.array([[np.nan] * 16, [1.0] * 16], np.float32), "NaN"),
        (np.array([[np.inf] * 16, [1.0] * 16], np.float32), "NaN or infinite"),
        (np.zeros((2, 16), np.float32), "zero norm"),
    ],
)
def test_bad_vectors_are_refused_and_nothing_is_stored(service, bad, message):
    _put(service)
    before = service.stats()
    with pytest.raises(InputError, match=message):
        def _tx(session):
            ids = [service.catalog.patient_id(session, p, create=True) for p in ("NEW1", "NEW2")]
            service.catalog.put_vectors(session, "eagle", "sig", ids, bad, source="bad.h5")

        service.catalog.write(_tx)
    assert service.stats() == before


def test_deleted_index_file_is_rebuilt(service, settings):
    _put(service)
    service.vectors.get("eagle", "sig")
    index_path, _ = service.vectors.paths("eagle", "sig")
    index_path.unlink()
    service.vectors.unload()
    assert len(service.search_patient("P001", k=3, kind="eagle")) == 3
    assert index_path.exists()


def test_index_from_an_older_generation_is_rebuilt(service):
    _put(service, n=10)
    service.vectors.get("eagle", "sig")
    index_path, meta_path = service.vectors.paths("eagle", "sig")
    old_index, old_meta = index_path.read_bytes(), meta_path.read_text()
    names, _ = _put(service, n=5, seed=3, names=[f"Q{i}" for i in range(5)])
    service.vectors.get("eagle", "sig")
    # put back the files of the older generation, as a restored backup would
    index_path.write_bytes(old_index)
    meta_path.write_text(old_meta)
    service.vectors.unload()
    loaded = service.vectors.get("eagle", "sig")
    assert loaded.ntotal == 15
    assert json.loads(meta_path.read_text())["generation"] == 2
    assert {h.patient for h in service.search_patient("Q0", k=14, kind="eagle")} >= set(names[1:])


def test_sidecar_that_lies_about_ids_is_caught(service):
    _put(service, n=10)
    service.vectors.get("eagle", "sig")
    _, meta_path = service.vectors.paths("eagle", "sig")
    meta = json.loads(meta_path.read_text())
    meta["ids_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    service.vectors.unload()
    service.vectors.get("eagle", "sig")
    assert json.loads(meta_path.read_text())["ids_sha256"] != "0" * 64


def test_corrupt_index_file_is_rebuilt(service):
    _put(service, n=10)
    service.vectors.get("eagle", "sig")
    index_path, _ = service.vectors.paths("eagle", "sig")
    index_path.write_bytes(b"garbage")
    service.vectors.unload()
    assert service.vectors.get("eagle", "sig").ntotal == 10


def test_signatures_never_share_an_index(service):
    _put(service, n=6, signature="real")
    _put(service, n=6, signature="tiny:x", seed=1)
    assert service.vectors.paths("eagle", "real") != service.vectors.paths("eagle", "tiny:x")
    assert service.vectors.get("eagle", "real").ntotal == 6


def test_replacing_a_vector_keeps_one_per_patient(service):
    _put(service, n=6)
    _put(service, n=6, seed=9)
    assert service.stats()["vectors"] == {"eagle": 6}
    assert service.vectors.get("eagle", "sig").ntotal == 6


def test_committed_writes_update_a_loaded_index_in_place(service):
    names, _ = _put(service, n=12)
    before = service.vectors.get("eagle", "sig")
    index_object = before.index
    _put(service, n=4, seed=5, names=names[:2] + ["N1", "N2"])  # two replaced, two new
    after = service.vectors.get("eagle", "sig")
    assert after.index is index_object and after.ntotal == 14  # updated, not rebuilt
    ids, raw = service.catalog.load_vectors("eagle", "sig")
    normed = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    q = list(ids).index(service.catalog.patient_ids(["N1"])["N1"])
    scores = normed @ normed[q]
    scores[q] = -np.inf
    expected = [service.catalog.external_ids([ids[i]])[int(ids[i])] for i in np.argsort(-scores)[:5]]
    assert [h.patient for h in service.search_patient("N1", k=5, kind="eagle")] == expected
    _, meta_path = service.vectors.paths("eagle", "sig")
    assert json.loads(meta_path.read_text())["generation"] == after.info.generation == 2
    service.vectors.unload()
    assert service.vectors._read_valid(service.catalog.vector_set("eagle", "sig")) is not None  # saved file is current


def test_forced_reindex_swaps_the_rebuilt_index_in(service):
    """`reindex --force` rebuilds each index and the process then uses the rebuilt one (searches,
    later commits), not the index it had loaded before: so a changed index kind takes effect."""
    from eagle_index.config import IndexSettings

    names, _ = _put(service, n=12)
    before = service.vectors.get("eagle", "sig")
    assert before.index_type == "flat"
    service.vectors.settings = IndexSettings(type="hnsw")
    (entry,) = [e for e in service.reindex(force=True) if e["kind"] == "eagle"]
    assert entry["index_type"] == "hnsw" and entry["count"] == 12
    after = service.vectors.get("eagle", "sig")
    assert after is not before and after.index_type == "hnsw"
    assert len(service.search_patient("P003", k=5, kind="eagle")) == 5
    _put(service, n=2, seed=3, names=["N1", "N2"])  # a later commit: the file keeps what reindex built
    assert service.vectors.get("eagle", "sig").index_type == "hnsw"
    _, meta_path = service.vectors.paths("eagle", "sig")
    assert json.loads(meta_path.read_text())["index_type"] == "hnsw"


def test_a_whole_set_is_read_in_id_ranges_into_the_same_matrix(service, monkeypatch):
    """Loading a set for an index build reads `LOAD_ROWS_CHUNK` rows at a time (1M x 1280-d read at once
    ran out of 24 GB): chunk edges, a short last chunk and gaps in the ids give the one-read answer."""
    from eagle_index.store import catalog_reads

    names, vectors = _put(service, n=23, dim=8)
    _put(service, n=5, dim=8, signature="other", seed=3, names=[f"O{i}" for i in range(5)])  # interleaved ids, another set
    service.catalog.write(lambda s: service.catalog.delete_vectors(s, "eagle", "sig", service.catalog.patient_ids(["P004", "P010"]).values()))
    ids_all, want = service.catalog.load_vectors("eagle", "sig", list(range(1, 100)))
    assert len(ids_all) == 21
    for chunk in (1, 4, 7, 21, 100):
        monkeypatch.setattr(catalog_reads, "LOAD_ROWS_CHUNK", chunk)
        ids, matrix = service.catalog.load_vectors("eagle", "sig")
        np.testing.assert_array_equal(ids, ids_all)
        np.testing.assert_array_equal(matrix, want)
    keep = [i for i in range(23) if names[i] not in ("P004", "P010")]
    np.testing.assert_allclose(want, vectors[keep], rtol=0, atol=0)


def test_a_whole_set_read_does_not_see_a_commit_between_its_ranges(service, monkeypatch):
    """An ingest may commit while a probe ranks the archive (no read lock there): the ranges of one load
    share one snapshot, so the load returns the set as it was, neither a mix nor an error."""
    from eagle_index.store import catalog_reads

    _put(service, n=12, dim=8)
    before_ids, before = service.catalog.load_vectors("eagle", "sig", list(range(1, 100)))
    monkeypatch.setattr(catalog_reads, "LOAD_ROWS_CHUNK", 4)
    first_range = catalog_reads._matrix
    commits = []

    def commit_after_the_first_range(rows):
        if not commits:  # a patient of a later range loses its vector meanwhile
            commits.append(service.catalog.write(
                lambda s: service.catalog.delete_vectors(s, "eagle", "sig", service.catalog.patient_ids(["P009"]).values())))
        return first_range(rows)

    monkeypatch.setattr(catalog_reads, "_matrix", commit_after_the_first_range)
    ids, matrix = service.catalog.load_vectors("eagle", "sig")
    assert commits
    np.testing.assert_array_equal(ids, before_ids)
    np.testing.assert_array_equal(matrix, before)
    assert len(service.catalog.load_vectors("eagle", "sig")[0]) == 11  # the commit landed
