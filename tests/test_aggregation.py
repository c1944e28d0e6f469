"""EAGLE aggregation: per-slide candidates must reproduce the global top-k exactly."""

import numpy as np
import pytest

from eagle_index.aggregation import (
    attention_pooled,
    eagle_patient_vector,
    row_major_index,
    select_patient_tiles,
    slide_candidates,
    top_k_rows,
)


def _slide(rng, name, n, dim=8, tie_values=None):
    side = int(np.ceil(np.sqrt(n)))
    xs, ys = np.meshgrid(np.arange(side) * 448.0, np.arange(side) * 448.0)
    order = rng.permutation(side * side)[:n]  # rows in arbitrary order, as STAMP v2 writes
    x_um, y_um = xs.ravel()[order], ys.ravel()[order]
    scores = rng.choice(tie_values, n).astype(np.float32) if tie_values is not None else rng.normal(size=n).astype(np.float32)
    tokens = rng.normal(size=(n, dim)).astype(np.float32)
    return dict(name=name, x_um=x_um, y_um=y_um, scores=scores, tokens=tokens)


def _global_reference(slides, k):
    """Brute force: rank every tile of the patient by the documented key."""
    keys = []
    for slide_pos, s in sorted(enumerate(slides), key=lambda p: p[1]["name"]):
        rank = row_major_index(s["x_um"], s["y_um"])
        for row in range(len(s["scores"])):
            keys.append((-float(s["scores"][row]), s["name"], int(rank[row]), slide_pos, row))
    keys.sort()
    chosen = keys[: min(k, len(keys))]
    tokens = np.stack([slides[p]["tokens"][r] for *_, p, r in chosen])
    return [(p, r) for *_, p, r in chosen], tokens.astype(np.float64).mean(axis=0)


def _candidates(slides, k):
    out = []
    for s in slides:
        c = slide_candidates(s["name"], s["scores"], s["x_um"], s["y_um"], k)
        rows = [int(np.flatnonzero((s["x_um"] == x) & (s["y_um"] == y))[0]) for x, y in zip(c.x_um, c.y_um)]
        c.class_tokens = s["tokens"][rows]
        out.append((c, rows))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [None, [0.0, 1.0, 2.0]])
def test_candidates_reproduce_global_top_k(seed, ties):
    rng = np.random.default_rng(seed)
    slides = [_slide(rng, f"slide-{name}", int(rng.integers(3, 60)), tie_values=ties) for name in "cab"]
    k = 25
    expected_tiles, expected_vector = _global_reference(slides, k)
    cands = _candidates(slides, k)
    vector, selection = eagle_patient_vector([c for c, _ in cands], k)
    got_tiles = [(int(s), cands[s][1][r]) for s, r in zip(selection.slide, selection.row)]
    assert got_tiles == expected_tiles
    np.testing.assert_allclose(vector, expected_vector, rtol=1e-6)


def test_adding_a_slide_later_equals_all_at_once():
    rng = np.random.default_rng(7)
    slides = [_slide(rng, n, 40, tie_values=[0.5, 1.5]) for n in ("s1", "s2", "s3")]
    cands = [c for c, _ in _candidates(slides, 25)]
    at_once, _ = eagle_patient_vector(cands, 25)
    later, _ = eagle_patient_vector(cands[2:] + cands[:2], 25)  # arrival order must not matter
    np.testing.assert_array_equal(at_once, later)


def test_k_is_min_of_top_k_and_tiles():
    rng = np.random.default_rng(1)
    slides = [_slide(rng, "only", 7)]
    cands = [c for c, _ in _candidates(slides, 25)]
    vector, selection = eagle_patient_vector(cands, 25)
    assert len(selection.slide) == 7
    np.testing.assert_allclose(vector, slides[0]["tokens"].astype(np.float64).mean(axis=0), rtol=1e-6)


def test_ties_within_a_slide_go_to_row_major_order():
    scores = np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32)
    x_um = np.array([448.0, 0.0, 0.0, 448.0])
    y_um = np.array([0.0, 448.0, 0.0, 448.0])
    rows = top_k_rows(scores, 2, row_major_index(x_um, y_um))
    assert list(rows) == [2, 0]  # (0,0) then (448,0): y outer, x inner


def test_ties_across_slides_go_to_slide_name_order():
    a = slide_candidates("b-slide", [1.0], [0.0], [0.0], 25)
    b = slide_candidates("a-slide", [1.0], [0.0], [0.0], 25)
    selection = select_patient_tiles([a, b], 1)
    assert int(selection.slide[0]) == 1  # "a-slide" sorts first


def test_attention_pooling_is_softmax_weighted_mean():
    feats = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    out = attention_pooled(np.array([0.0, np.log(3.0)]), feats)
    np.testing.assert_allclose(out, [0.25, 0.75], rtol=1e-6)
    big = attention_pooled(np.array([1000.0, 1000.0]), feats)  # no overflow
    np.testing.assert_allclose(big, [0.5, 0.5])
