"""Probe building blocks: metrics against scikit-learn, DeLong against its definition, models, folds."""

import numpy as np
import pytest
from scipy.stats import false_discovery_control
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

from eagle_index.errors import InputError
from eagle_index.probing import cv as cvlib
from eagle_index.probing.delong import benjamini_hochberg, delong_test, fast_delong
from eagle_index.probing.metrics import classification_metrics, mean_sd, summarize
from eagle_index.probing.models import FittedProbe, LogRegSpec, MLPSpec, blob_metadata, fit, l2_normalize, model_spec


def _probabilities(rng, n, classes, ties=False):
    logits = rng.normal(size=(n, classes))
    if ties:
        logits = np.round(logits, 1)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0, 1])
def test_binary_metrics_match_sklearn(seed, target):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    proba = _probabilities(rng, 300, 2, ties=seed % 2 == 1)
    proba[:, 1] = np.clip(proba[:, 1] + 0.2 * y, 0, 1)
    proba[:, 0] = 1 - proba[:, 1]
    got = classification_metrics(y, proba, target)
    pos = y == target
    predicted = proba.argmax(axis=1)
    assert got["auroc"] == pytest.approx(roc_auc_score(pos, proba[:, target]), abs=1e-12)
    assert got["auprc"] == pytest.approx(average_precision_score(pos, proba[:, target]), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y, predicted, pos_label=target), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_metrics_match_sklearn_one_vs_rest(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 400)
    proba = _probabilities(rng, 400, 4, ties=seed == 2)
    proba[np.arange(400), y] += 0.3
    proba /= proba.sum(axis=1, keepdims=True)
    got = classification_metrics(y, proba, target=2)
    predicted = proba.argmax(axis=1)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12)
    expected_ap = np.mean([average_precision_score(y == c, proba[:, c]) for c in range(4)])
    assert got["auprc"] == pytest.approx(expected_ap, abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y, predicted, average="macro"), abs=1e-12)


def test_mean_sd_is_the_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(1.0)}
    assert mean_sd([0.7]) == {"mean": 0.7, "sd": 0.0}
    summary = summarize([{"auroc": 0.5, "auprc": 0.1, "balanced_accuracy": 0.5, "f1": 0.2}, {"auroc": 0.7, "auprc": 0.3, "balanced_accuracy": 0.6, "f1": 0.4}])
    assert set(summary) == {"auroc", "auprc", "balanced_accuracy", "f1"} and summary["auroc"]["mean"] == pytest.approx(0.6)


# -- DeLong ------------------------------------------------------------------------------------
def test_delong_hand_example():
    # positives 0.9 0.8 0.4, negatives 0.7 0.3 0.2: 8 of 9 pairs ordered -> AUC 8/9;
    # structural components V10 = (1, 1, 2/3), V01 = (2/3, 1, 1): variance = 2 * (1/27) / 3 = 2/81
    positive = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    aucs, cov = fast_delong(positive, scores)
    assert aucs[0] == pytest.approx(8 / 9)
    assert cov[0, 0] == pytest.approx(2 / 81)


def _delong_brute_force(positive, scores):
    """DeLong 1988 directly: psi over every (positive, negative) pair, O(m n)."""
    x, y = scores[:, positive], scores[:, ~positive]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.cov(v10) / x.shape[1] + np.cov(v01) / y.shape[1]


@pytest.mark.parametrize("seed", range(3))
def test_fast_delong_equals_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    positive = rng.random(120) < 0.3
    base = rng.normal(size=120) + positive
    scores = np.vstack([np.round(base + 0.5 * rng.normal(size=120), 1), base + rng.normal(size=120), rng.normal(size=120)])
    aucs, cov = fast_delong(positive, scores)
    brute_aucs, brute_cov = _delong_brute_force(positive, scores)
    np.testing.assert_allclose(aucs, brute_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, brute_cov, atol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(positive, s) for s in scores], atol=1e-12)


def test_delong_variance_agrees_with_the_bootstrap():
    rng = np.random.default_rng(7)
    n = 300
    positive = rng.random(n) < 0.4
    a = positive * 0.8 + rng.normal(size=n)
    b = positive * 0.5 + 0.6 * a + rng.normal(size=n)
    result = delong_test(positive, a, b)
    diffs = []
    for _ in range(1500):
        idx = rng.integers(0, n, n)
        if positive[idx].all() or not positive[idx].any():
            continue
        diffs.append(roc_auc_score(positive[idx], a[idx]) - roc_auc_score(positive[idx], b[idx]))
    assert result.se == pytest.approx(np.std(diffs), rel=0.15)
    assert result.difference == pytest.approx(roc_auc_score(positive, a) - roc_auc_score(positive, b))


def test_delong_test_p_values():
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.5
    strong, weak = positive * 2.0 + rng.normal(size=400), positive * 0.2 + rng.normal(size=400)
    assert delong_test(positive, strong, weak).p_value < 1e-6
    same = delong_test(positive, strong, strong.copy())
    assert (same.z, same.p_value) == (0.0, 1.0)
    assert delong_test(positive, strong, 2 * strong + 1).p_value == 1.0  # the same ranking
    with pytest.raises(InputError, match="at least 2 positive"):
        delong_test(np.array([1, 0, 0, 0], dtype=bool), np.arange(4.0), np.arange(4.0))


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(3)
    p = np.r_[rng.random(20), [1e-4, 0.003, 0.01, 0.01]]
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"), atol=1e-12)
    assert benjamini_hochberg([]).size == 0


# -- models ---------------------------------------------------------------------------------------
def _separable(n=300, dim=32, classes=2, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    directions = rng.normal(size=(classes, dim))
    x = rng.normal(size=(n, dim)) + 2.0 + shift * directions[y]
    return x.astype(np.float32), y


@pytest.mark.parametrize("classes", [2, 3])
def test_logreg_numpy_prediction_equals_sklearn(classes):
    x, y = _separable(classes=classes)
    probe = fit(LogRegSpec(), x, y, classes)
    reference = LogisticRegression(C=1.0, solver="lbfgs", max_iter=10_000, class_weight="balanced").fit(
        l2_normalize(x).astype(np.float64), y)
    np.testing.assert_allclose(probe.predict_proba(x), reference.predict_proba(l2_normalize(x).astype(np.float64)), atol=1e-6)
    assert probe.info["converged"] == "true"


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_parameters_round_trip_as_safetensors_without_pickle(model):
    from safetensors.numpy import load

    x, y = _separable(n=200)
    probe = fit(model_spec(model, **({"epochs": 4} if model == "mlp" else {})), x, y, 2, seed=1)
    blob = probe.to_bytes()
    assert b"pickle" not in blob and blob_metadata(blob)["format"] == "eagle-index-probe"
    assert set(load(blob)) == set(probe.tensors)
    again = FittedProbe.from_bytes(blob)
    np.testing.assert_array_equal(again.predict_proba(x), probe.predict_proba(x))
    # scaling a vector does not change its prediction: inputs are L2-normalized
    np.testing.assert_allclose(again.predict_proba(3.5 * x), probe.predict_proba(x), atol=1e-6)
    with pytest.raises(InputError, match="takes 32-d vectors"):
        again.predict_proba(x[:, :16])


def test_mlp_is_deterministic_learns_and_matches_torch():
    import torch
    from torch.nn import functional as F

    x, y = _separable(n=400, dim=48, seed=2)
    spec = MLPSpec()
    train, test = np.arange(300), np.arange(300, 400)
    first, second = fit(spec, x[train], y[train], 2, seed=5), fit(spec, x[train], y[train], 2, seed=5)
    for name in first.tensors:
        np.testing.assert_array_equal(first.tensors[name], second.tensors[name])
    other = fit(spec, x[train], y[train], 2, seed=6)
    assert not np.array_equal(first.tensors["fc1.weight"], other.tensors["fc1.weight"])
    assert first.tensors["fc1.weight"].shape == (256, 48)
    proba = first.predict_proba(x[test])
    assert roc_auc_score(y[test], proba[:, 1]) > 0.95
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in first.tensors.items()}
    z = (torch.from_numpy(l2_normalize(x[test])) - t["scaler.mean"]) / t["scaler.scale"]
    reference = torch.softmax(F.linear(F.silu(F.linear(z, t["fc1.weight"], t["fc1.bias"])), t["fc2.weight"], t["fc2.bias"]), dim=1)
    np.testing.assert_allclose(proba, reference.numpy(), atol=1e-5)
    assert 1 <= int(first.info["best_epoch"]) <= int(first.info["epochs_run"]) <= spec.epochs


def test_model_spec_rejects_unknown_models_and_parameters():
    assert model_spec("logreg").as_dict() == {"model": "logreg", "C": 1.0, "max_iter": 10_000, "class_weight": "balanced", "standardize": False}
    with pytest.raises(InputError, match="unknown probe model"):
        model_spec("svm")
    with pytest.raises(InputError, match="bad parameters"):
        model_spec("mlp", depth=3)


# -- folds and few-shot -------------------------------------------------------------------------
def test_stratified_folds_cover_every_class_and_are_seeded():
    y = np.array([0] * 50 + [1] * 7 + [2] * 13)
    folds = cvlib.stratified_folds(y, 5, seed=3)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    for fold in range(5):
        assert set(y[folds == fold]) == {0, 1, 2}
    np.testing.assert_array_equal(folds, cvlib.stratified_folds(y, 5, seed=3))
    assert not np.array_equal(folds, cvlib.stratified_folds(y, 5, seed=4))


def test_too_few_cases_for_the_folds_are_refused():
    y = np.array([0] * 20 + [1] * 3)
    with pytest.raises(InputError, match=r"class 'MUT' \(3\) has fewer patients than the 5 folds"):
        cvlib.check_class_counts(y, ["WT", "MUT"], 5, "label 'BRAF'")
    cvlib.check_class_counts(y, ["WT", "MUT"], 3)


def test_few_shot_curve_skips_k_without_test_cases_and_repeats_exactly():
    x, y = _separable(n=120, dim=16, seed=4)
    y[:] = 0
    y[:10] = 1  # 10 positives: k = 16 leaves none to test
    curve = cvlib.few_shot(x, y, ["a", "b"], 1, ks=[1, 4, 16], draws=3, seed=0)
    assert [p["k"] for p in curve] == [1, 4, 16]
    assert "skipped" in curve[2] and "'b' has 10" in curve[2]["skipped"]
    assert curve[1]["n_train"] == 8 and curve[1]["n_test"] == 112 and curve[1]["draws"] == 3
    assert curve == cvlib.few_shot(x, y, ["a", "b"], 1, ks=[1, 4, 16], draws=3, seed=0)
