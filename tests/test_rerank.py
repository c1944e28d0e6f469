"""The lean index's re-ranking step (store/rerank.py): the compiled kernel and the top-k selection
give what the plain numpy expressions give."""

from __future__ import annotations

import numpy as np
import pytest

from eagle_index.store import rerank


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 3203])
def test_kernel_scores_equal_numpy_scores(n):
    rng = np.random.default_rng(n)
    rows = rng.integers(-32767, 32768, (5000, 96)).astype("<i2")
    slots = np.sort(rng.choice(len(rows), n, replace=False))
    query = (rng.standard_normal(96) / 32767).astype(np.float32)
    assert rerank.prepare()  # numba is installed with umap-learn: the kernel is what runs
    got = rerank.row_scores(rows, slots, query)
    want = rows[slots].astype(np.float64) @ query.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (n,)


def test_without_numba_the_numpy_path_gives_the_same_scores(monkeypatch):
    rng = np.random.default_rng(1)
    rows = rng.integers(-32767, 32768, (300, 40)).astype("<i2")
    slots = np.sort(rng.choice(300, 77, replace=False))
    query = rng.standard_normal(40).astype(np.float32)
    compiled = rerank.row_scores(rows, slots, query)
    monkeypatch.setattr(rerank, "_kernel", False)
    np.testing.assert_allclose(rerank.row_scores(rows, slots, query), compiled, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("k", [1, 5, 10, 50, 200, 250])
def test_top_k_is_lexsort_best_first_ties_by_id(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 12, 200).astype(np.float32) / 4  # many ties, at the k-th place too
    ids = rng.permutation(1000)[:200].astype(np.int64)
    want = np.lexsort((ids, -scores))[:k]
    np.testing.assert_array_equal(rerank.top_k_by_score(scores, ids, k), want)
