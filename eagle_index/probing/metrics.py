"""Classification metrics on predicted class probabilities, in numpy.

The definitions are scikit-learn's (tests compare them on the same predictions):

- binary: AUROC and AUPRC (average precision, the step-wise area - no interpolation) of the
  target class's probability; F1 of the target class; balanced accuracy; the predicted class
  is the most probable one (a 0.5 threshold for two classes).
- multi-class: one-vs-rest AUROC and AUPRC averaged over classes (macro), macro F1, balanced
  accuracy.

`y` holds class indices 0..C-1 into `classes`; `proba` is [N, C].
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from eagle_index.results import PROBE_METRICS

METRICS = PROBE_METRICS  # the probe summary's metrics (results.ProbeResult)


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties); nan without both classes."""
    positive = np.asarray(positive, dtype=bool)
    m = int(positive.sum())
    n = positive.size - m
    if m == 0 or n == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - m * (m + 1) / 2.0) / (m * n))


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """AUPRC as average precision: sum over thresholds of (recall step) x precision."""
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    sorted_score, hits = np.asarray(score, dtype=np.float64)[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_score)), hits.size - 1]
    tps = np.cumsum(hits)[last_of_tie]
    precision = tps / (last_of_tie + 1.0)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in `y`."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    return float(np.mean([np.mean(predicted[y == c] == c) for c in np.unique(y)]))


def _f1_of(y: np.ndarray, predicted: np.ndarray, c: int) -> float:
    tp = np.sum((predicted == c) & (y == c))
    denominator = np.sum(predicted == c) + np.sum(y == c)
    return float(2.0 * tp / denominator) if denominator else 0.0


def f1(y: np.ndarray, predicted: np.ndarray, n_classes: int, target: int) -> float:
    """F1 of the target class (two classes) or macro F1 over classes seen in y or predicted."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    if n_classes == 2:
        return _f1_of(y, predicted, target)
    return float(np.mean([_f1_of(y, predicted, c) for c in np.union1d(y, predicted)]))


def classification_metrics(y: np.ndarray, proba: np.ndarray, target: int) -> dict[str, float]:
    """The four reported metrics (see the module docstring) of one set of predictions."""
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    predicted = proba.argmax(axis=1)
    if n_classes == 2:
        positive = y == target
        roc, pr = auroc(positive, proba[:, target]), average_precision(positive, proba[:, target])
    else:
        present = np.unique(y)
        roc = float(np.mean([auroc(y == c, proba[:, c]) for c in present]))
        pr = float(np.mean([average_precision(y == c, proba[:, c]) for c in present]))
    return {
        "auroc": roc,
        "auprc": pr,
        "balanced_accuracy": balanced_accuracy(y, predicted),
        "f1": f1(y, predicted, n_classes, target),
    }


def mean_sd(values) -> dict[str, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    values = np.asarray(list(values), dtype=np.float64)
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(np.mean(values)), "sd": sd}


def summarize(per_split: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "sd"}} over folds or draws."""
    return {name: mean_sd(m[name] for m in per_split) for name in METRICS}
