"""DeLong's test for two correlated AUROCs (fast algorithm) and Benjamini-Hochberg.

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of AUROCs measured on the
same cases from "structural components"; Sun & Xu (2014) compute those components from
midranks in O(N log N) instead of comparing every positive with every negative:

    for m positives X and n negatives Y, per predictor,
    tz = midranks over all cases, tx = over positives only, ty = over negatives only
    AUC    = (sum(tz[X]) / m - (m + 1) / 2) / n
    V10[i] = (tz[X_i] - tx[i]) / n          (share of negatives ranked below positive i)
    V01[j] = 1 - (tz[Y_j] - ty[j]) / m      (share of positives ranked above negative j)
    S      = cov(V10) / m + cov(V01) / n     (k x k for k predictors)

The two-sided test of AUC_a = AUC_b uses z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata

from eagle_index.errors import InputError


def fast_delong(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs [k], covariance [k, k]) of k predictors (`scores` [k, N]) of the same cases."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise InputError(f"DeLong's test needs at least 2 positive and 2 negative cases (got {m} and {n})")
    x, y = scores[:, positive], scores[:, ~positive]
    tx, ty = rankdata(x, axis=1), rankdata(y, axis=1)
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float

    def as_dict(self) -> dict:
        return asdict(self)


def delong_test(positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DeLongResult:
    """Two-sided DeLong test of equal AUROC for two predictors of the same cases."""
    aucs, cov = fast_delong(positive, np.vstack([score_a, score_b]))
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    difference = float(aucs[0] - aucs[1])
    if variance <= 1e-300:  # identical rankings: no evidence of a difference
        z, p = 0.0, 1.0
    else:
        z = difference / np.sqrt(variance)
        p = float(2.0 * norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), difference, float(np.sqrt(max(variance, 0.0))), float(z), p)


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.size == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.clip(adjusted, 0.0, 1.0)
    return out
