"""A hit's percentile: the share of patient pairs of its vector set that score lower (what "close" means here)."""

import numpy as np
import pytest

from eagle_index.score_context import ScoreContext, pair_scores, percentile
from test_search import make_catalog


def test_pair_scores_are_every_distinct_pair_by_hand():
    m = np.array([[1, 0], [0, 2], [3, 3]], dtype=np.float32)  # cosines: (0,1)=0, (0,2)=(1,2)=0.7071
    np.testing.assert_allclose(pair_scores(m), [0.0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert len(pair_scores(m[:1])) == 0 and percentile(pair_scores(m[:1]), 0.5) is None
    ref = pair_scores(m)
    assert percentile(ref, -1.0) == 0.0 and percentile(ref, 0.5) == pytest.approx(33.3) and percentile(ref, 1.0) == 100.0


def test_search_hits_carry_the_percentile_among_all_pairs(service):
    cat = make_catalog(service, n=60)
    result = service.searcher.search_patient(cat["names"][0], k=5)
    normed = cat["vectors"] / np.linalg.norm(cat["vectors"], axis=1, keepdims=True)
    sims = (normed @ normed.T)[np.triu_indices(len(normed), k=1)]
    for hit in result.hits:
        expected = 100.0 * np.mean(sims < np.float32(hit.score) - 1e-6)
        assert hit.percentile == pytest.approx(expected, abs=0.2), hit
        assert hit.as_dict()["percentile"] == hit.percentile
    assert result.hits[0].percentile > 90  # the nearest neighbour of a clustered archive is close by its standard


def test_the_reference_is_sampled_and_kept_while_the_set_holds(service):
    cat = make_catalog(service, n=60)
    context = ScoreContext(service.catalog, sample=20)
    first = context.reference("eagle", "sig")
    assert len(first) == 20 * 19 // 2
    assert context.reference("eagle", "sig") is first  # cached
    full = ScoreContext(service.catalog).reference("eagle", "sig")
    assert len(full) == 60 * 59 // 2 and len(cat["names"]) == 60


def test_the_reference_is_kept_in_a_file_under_the_same_rule(service, tmp_path, monkeypatch, caplog):
    """A new process (a CLI search) reads the reference a previous one kept beside the index instead of
    loading vectors; a set that grew past REFRESH, or a torn file, gets a new one."""
    from eagle_index.score_context import REFRESH

    make_catalog(service, n=60)
    first = ScoreContext(service.catalog, sample=20, cache_dir=tmp_path).reference("eagle", "sig")
    [kept] = tmp_path.glob("*.pairs-20-0.npz")

    def no_loading(*args, **kwargs):
        raise AssertionError("the kept reference should have been read")

    with monkeypatch.context() as patched:
        patched.setattr(service.catalog, "load_vectors", no_loading)
        again = ScoreContext(service.catalog, sample=20, cache_dir=tmp_path).reference("eagle", "sig")
    np.testing.assert_array_equal(again, first)

    kept.write_bytes(b"torn")
    with caplog.at_level("WARNING"):
        fresh = ScoreContext(service.catalog, sample=20, cache_dir=tmp_path).reference("eagle", "sig")
    assert "unreadable score reference" in caplog.text and len(fresh) == 20 * 19 // 2
    assert np.load(kept)["count"] == 60  # replaced by a good one

    def more(session):
        ids = [service.catalog.patient_id(session, f"NEW-{i}", create=True) for i in range(10)]
        service.catalog.put_vectors(session, "eagle", "sig", ids, np.ones((10, 24), np.float32), source="test")

    service.catalog.write(more)  # 70 vectors: past REFRESH of 60, a new reference is made and kept
    assert 10 > REFRESH * 60
    with monkeypatch.context() as patched:
        loads = []
        real = service.catalog.load_vectors
        patched.setattr(service.catalog, "load_vectors", lambda *a, **k: loads.append(1) or real(*a, **k))
        ScoreContext(service.catalog, sample=20, cache_dir=tmp_path).reference("eagle", "sig")
    assert loads and np.load(kept)["count"] == 70
