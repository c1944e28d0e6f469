"""Search: filtered top-k equals brute-force filtering then exact top-k; kNN vote; retrieval metrics."""

import json

import numpy as np
import pytest

from conftest import clustered_vectors
from conftest import run_cli
from eagle_index.errors import InputError, NotFoundError
from eagle_index.search import (
    SearchFilters,
    exact_top_k,
    knn_vote,
    leave_one_out_neighbours,
    parse_label_filters,
    retrieval_metrics,
    site_of,
)

ORGANS = ("colon", "lung", "breast")
SITES = ("AA", "BB", "CC", "DD")


def make_catalog(service, n=120, dim=24, seed=0, kind="eagle", signature="sig", without_vector=()):
    """Patients TCGA-<site>-<n>, organ/grade labels (some missing), clustered vectors."""
    rng = np.random.default_rng(seed)
    vectors = clustered_vectors(n, dim, seed)
    names = [f"TCGA-{SITES[i % len(SITES)]}-{i:04d}" for i in range(n)]
    organ = [ORGANS[int(rng.integers(0, 3))] for _ in range(n)]
    grade = [None if rng.random() < 0.2 else str(int(rng.integers(1, 4))) for _ in range(n)]
    def _tx(session):
        ids = [service.catalog.patient_id(session, p, create=True) for p in names]
        keep = [i for i in range(n) if names[i] not in without_vector]
        service.catalog.put_vectors(session, kind, signature, [ids[i] for i in keep], vectors[keep], source="test")
        for pid, o, g in zip(ids, organ, grade):
            service.catalog.put_label(session, pid, "organ", o, "test")
            if g is not None:
                service.catalog.put_label(session, pid, "grade", g, "test")
        return ids

    ids = service.catalog.write(_tx)
    return {"names": names, "ids": ids, "vectors": vectors, "organ": organ, "grade": grade}


def brute_force(cat, query_index, k, allow, min_score=None):
    """Reference: normalize, filter with a Python predicate, exact top-k by (score desc, name)."""
    normed = cat["vectors"] / np.linalg.norm(cat["vectors"], axis=1, keepdims=True)
    scores = normed @ normed[query_index]
    rows = [i for i in range(len(scores)) if i != query_index and allow(i) and (min_score is None or scores[i] >= min_score)]
    rows.sort(key=lambda i: (-scores[i], cat["ids"][i]))
    return [cat["names"][i] for i in rows[:k]], [float(scores[i]) for i in rows[:k]]


FILTER_CASES = [
    ("none", {}, lambda cat, q: (lambda i: True)),
    ("organ", {"labels": ["organ=lung"]}, lambda cat, q: (lambda i: cat["organ"][i] == "lung")),
    ("organ-or", {"labels": ["organ=lung", "organ=breast"]}, lambda cat, q: (lambda i: cat["organ"][i] in ("lung", "breast"))),
    ("organ-and-grade", {"labels": ["organ=colon", "grade=2"]},
     lambda cat, q: (lambda i: cat["organ"][i] == "colon" and cat["grade"][i] == "2")),
    ("has-grade", {"labels": ["grade=*"]}, lambda cat, q: (lambda i: cat["grade"][i] is not None)),
    ("exclude-site", {"exclude_same_site": True},
     lambda cat, q: (lambda i: cat["names"][i].split("-")[1] != cat["names"][q].split("-")[1])),
    ("exclude-same-organ", {"exclude_same": ["organ"]}, lambda cat, q: (lambda i: cat["organ"][i] != cat["organ"][q])),
    ("floor", {"min_score": 0.5}, lambda cat, q: (lambda i: True)),
    ("mixed", {"labels": ["organ=lung", "organ=colon"], "exclude_same_site": True, "min_score": 0.2,
               "exclude_patients": ["TCGA-BB-0001"]},
     lambda cat, q: (lambda i: cat["organ"][i] in ("lung", "colon") and cat["names"][i] != "TCGA-BB-0001"
                     and cat["names"][i].split("-")[1] != cat["names"][q].split("-")[1])),
]


@pytest.mark.parametrize("exact_limit", [20_000, 0], ids=["exact-path", "over-fetch-path"])
@pytest.mark.parametrize("case", FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filtered_search_equals_brute_force(service, case, exact_limit):
    _, raw_filters, predicate = case
    cat = make_catalog(service)
    service.searcher.exact_limit = exact_limit
    filters = SearchFilters.build(**raw_filters)
    for q in (0, 7, 33, 101):
        for k in (1, 5, 40):
            allow = predicate(cat, q)
            want_names, want_scores = brute_force(cat, q, k, allow, filters.min_score)
            hits = service.search_patient(cat["names"][q], k=k, filters=filters)
            assert [h.patient for h in hits] == want_names, (q, k)
            np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=1e-5, atol=1e-6)
            assert cat["names"][q] not in [h.patient for h in hits]
            available = sum(1 for i in range(len(cat["names"])) if i != q and allow(i))
            if filters.min_score is None:
                assert len(hits) == min(k, available)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_filtered_search_random_catalogs(service, seed):
    """Generated catalogs with a cohort filter: both paths agree with brute force."""
    cat = make_catalog(service, n=80, dim=16, seed=seed, without_vector=("TCGA-AA-0004",))
    members = [n for n, o in zip(cat["names"], cat["organ"]) if o != "breast"]
    service.cohorts.create("nonbreast", labels=["organ=colon", "organ=lung"])
    rng = np.random.default_rng(seed)
    for q in rng.choice(len(cat["names"]), 5, replace=False):
        if cat["names"][q] == "TCGA-AA-0004":
            continue
        want, _ = brute_force(cat, q, 10, lambda i: cat["names"][i] in members and cat["names"][i] != "TCGA-AA-0004")
        for limit in (20_000, 0):
            service.searcher.exact_limit = limit
            hits = service.search_patient(cat["names"][q], k=10, filters=SearchFilters.build(cohorts=["nonbreast"]))
            assert [h.patient for h in hits] == want


def test_vector_query_and_self_exclusion(service):
    cat = make_catalog(service, n=30)
    result = service.searcher.search_vector(cat["vectors"][3], k=3)
    assert result.hits[0].patient == cat["names"][3]  # a vector query may return the patient it came from
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(NotFoundError, match="dimension 5"):
        service.searcher.search_vector(np.ones(5), k=3)


def test_unknown_cohort_and_bad_label_filter(service):
    cat = make_catalog(service, n=20)
    with pytest.raises(NotFoundError, match="unknown cohort 'nope'"):
        service.search_patient(cat["names"][0], k=3, filters=SearchFilters.build(cohorts=["nope"]))
    with pytest.raises(InputError, match="NAME=VALUE"):
        SearchFilters.build(labels=["organ"])


def test_filters_round_trip_and_parse():
    f = SearchFilters.build(labels=["a=1", "a=2", "b=x=y"], cohorts=["c"], min_score=0.3, exclude_same_site=True)
    assert f.labels == {"a": ("1", "2"), "b": ("x=y",)}
    assert SearchFilters.from_dict(json.loads(json.dumps(f.as_dict()))) == f
    assert parse_label_filters({"a": ["1", "1"], "b": "2"}) == {"a": ("1",), "b": ("2",)}
    with pytest.raises(InputError, match="unknown filter"):
        SearchFilters.from_dict({"organ": "x"})


def test_site_rule():
    assert site_of("TCGA-AA-3521", {}) == "TCGA-AA"
    assert site_of("TCGA-AA-3521", {"SITE": "Mainz"}) == "Mainz"
    assert site_of("P17", {}) is None


def test_exact_top_k_ties_broken_by_id():
    matrix = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], np.float32)
    ids, _ = exact_top_k(np.array([1, 0], np.float32), np.array([9, 4, 1, 2]), matrix, 2)
    assert ids.tolist() == [2, 4]


def test_knn_vote_majority_and_weighted():
    vote = knn_vote(["a", "b", "b", None, "a", "a"], [0.99, 0.9, 0.9, 0.8, 0.1, 0.1])
    assert vote["majority"] == "a" and vote["counts"] == {"a": 3, "b": 2}
    assert vote["weighted"] == "b"  # 1.8 > 1.19
    assert vote["neighbours"] == 5 and vote["unlabelled"] == 1
    tie = knn_vote(["x", "y"], [0.5, 0.5])
    assert tie["majority"] == "x" and tie["weighted"] == "x"  # the nearer neighbour wins a full tie
    assert knn_vote([None], [0.3])["majority"] is None


def test_search_vote_through_service(service):
    cat = make_catalog(service, n=40)
    result = service.searcher.search_patient(cat["names"][0], k=7, vote="organ")
    labels = [h.labels["organ"] for h in result.hits]
    assert result.vote["label"] == "organ"
    assert result.vote["counts"] == {v: labels.count(v) for v in sorted(set(labels), key=lambda v: (-labels.count(v), v))}
    assert sum(result.vote["counts"].values()) == 7


def test_retrieval_metrics_by_hand():
    # queries of class 0, 0, 1; neighbours best first
    y = np.array([0, 0, 1])
    nb = np.array([[0, 1, 0], [1, 1, 0], [1, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.5, -np.inf, -np.inf]])
    m = retrieval_metrics(y, nb, scores, [1, 3], ["A", "B"])
    assert m["overall"]["Acc@1"] == pytest.approx(2 / 3)
    assert m["overall"]["Acc@3"] == pytest.approx(1.0)
    # MV@3: q0 votes 0 (2 vs 1) ok; q1 votes 1 (2 vs 1) wrong; q2 votes 1 ok
    assert m["overall"]["MV@3"] == pytest.approx(2 / 3)
    # AP@3: q0 = (1/1 + 2/3)/2; q1 = (1/3)/1; q2 = 1
    assert m["overall"]["mAP@3"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3 + 1) / 3)
    assert m["classes"]["A"]["n"] == 2 and m["classes"]["B"]["Acc@1"] == 1.0
    assert m["macro"]["Acc@1"] == pytest.approx((0.5 + 1.0) / 2)


def test_leave_one_out_matches_brute_force_and_groups():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 8)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    groups = np.arange(50) % 3
    idx, scores = leave_one_out_neighbours(m, 5, groups, block=7)
    for i in range(50):
        s = m @ m[i]
        order = [j for j in np.argsort(-s, kind="stable") if j != i and groups[j] != groups[i]][:5]
        assert idx[i].tolist() == order
        np.testing.assert_allclose(scores[i], s[order], rtol=1e-5)


def test_evaluate_retrieval_equals_per_patient_search(service):
    cat = make_catalog(service, n=60)
    report = service.searcher.evaluate_retrieval("organ", ks=[1, 5])
    assert report["patients"] == 60 and set(report["classes"]) == set(ORGANS)
    hit1 = []
    for q, name in enumerate(cat["names"]):
        hits = service.search_patient(name, k=1)
        hit1.append(hits[0].labels["organ"] == cat["organ"][q])
    assert report["overall"]["Acc@1"] == pytest.approx(np.mean(hit1))
    site = service.searcher.evaluate_retrieval("organ", ks=[1], exclude_same_site=True)
    site_hit1 = []  # the same metric by hand: each patient's nearest neighbour from another site
    for q, name in enumerate(cat["names"]):
        hits = service.search_patient(name, k=1, filters=SearchFilters.build(exclude_same_site=True))
        site_hit1.append(bool(hits) and hits[0].labels["organ"] == cat["organ"][q])
    assert site["exclude_same_site"] is True and site["overall"]["Acc@1"] == pytest.approx(np.mean(site_hit1))
    with pytest.raises(NotFoundError, match="unknown label 'nope'; known labels: "):
        service.searcher.evaluate_retrieval("nope")



def test_search_and_eval_cli(tmp_path, settings):
    from eagle_index.service import EagleService

    with EagleService(settings) as svc:
        cat = make_catalog(svc, n=40)
    data = settings.data_dir
    q = cat["names"][0]
    hits = json.loads(run_cli("search", "--patient", q, "-k", "4", "--label", "organ=lung", "--exclude-site", "--json",
                              "--data-dir", data).stdout)
    assert len(hits) == 4 and all(h["labels"]["organ"] == "lung" for h in hits)
    assert all(h["patient"].split("-")[1] != q.split("-")[1] for h in hits)
    voted = json.loads(run_cli("search", "--patient", q, "-k", "5", "--vote", "organ", "--json", "--data-dir", data).stdout)
    assert len(voted["hits"]) == 5 and voted["vote"]["label"] == "organ"
    text = run_cli("search", "--patient", q, "-k", "3", "--vote", "organ", "--data-dir", data).stdout
    assert "vote organ" in text
    # each hit's score in context: its percentile among the archive's patient pairs, as --json gives it
    first = json.loads(run_cli("search", "--patient", q, "-k", "3", "--json", "--data-dir", data).stdout)[0]
    assert f"{first['patient']}" in text and f"(closer than {first['percentile']:.1f}% of patient pairs)" in text
    report = json.loads(run_cli("eval", "retrieval", "--label", "organ", "-k", "1,3", "--json", "--data-dir", data).stdout)
    assert report["ks"] == [1, 3] and "Acc@3" in report["overall"]
    table = run_cli("eval", "retrieval", "--label", "organ", "--data-dir", data).stdout
    assert "mAP@5" in table and "colon" in table
    bad = run_cli("search", "--data-dir", data, check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_approximate_index_that_runs_dry_falls_back_to_exact(service, monkeypatch):
    """An index that returns fewer neighbours than asked (IVF probing few lists) still gives exact filtered top-k."""
    cat = make_catalog(service, n=150)
    real = service.vectors.search

    def approximate(kind, signature, queries, k):
        ids, scores = real(kind, signature, queries, k)
        return [i[:20] for i in ids], [s[:20] for s in scores]

    monkeypatch.setattr(service.vectors, "search", approximate)
    service.searcher.exact_limit = 0
    filters = SearchFilters.build(labels=["organ=breast", "grade=1"])
    want, _ = brute_force(cat, 5, 10, lambda i: cat["organ"][i] == "breast" and cat["grade"][i] == "1")
    assert [h.patient for h in service.search_patient(cat["names"][5], k=10, filters=filters)] == want
    assert len(want) == min(10, sum(1 for i in range(150) if i != 5 and cat["organ"][i] == "breast" and cat["grade"][i] == "1"))


def test_patient_query_asks_the_index_for_k_plus_the_refused(service, monkeypatch):
    """Only the query patient is refused: the index is asked for k + 1 neighbours, not ~2.4x k
    (an IVF index re-ranks ivf_refine_k_factor x that many rows: most of a search's time), and the
    hits equal brute force."""
    cat = make_catalog(service, n=150)
    real = service.vectors.search
    asked = []

    def spy(kind, signature, queries, k):
        asked.append(k)
        return real(kind, signature, queries, k)

    monkeypatch.setattr(service.vectors, "search", spy)
    service.searcher.exact_limit = 0
    want, _ = brute_force(cat, 7, 10, lambda i: True)
    assert [h.patient for h in service.search_patient(cat["names"][7], k=10)] == want
    assert asked == [11]
