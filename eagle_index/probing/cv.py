"""Patient-level stratified k-fold cross-validation and the few-shot curve.

Each row is one patient (a patient vector), so splitting rows is splitting patients: no
patient is ever in both the training and the test part of a fold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eagle_index.errors import InputError
from eagle_index.probing.metrics import classification_metrics, summarize
from eagle_index.probing.models import LogRegSpec, MLPSpec, compute_threads, fit

Progress = Callable[[int, int, str], None]
FEW_SHOT_KS = (1, 2, 4, 8, 16, 32)


def check_class_counts(y: np.ndarray, classes: list[str], folds: int, what: str = "the label") -> None:
    """Refuse cross-validation when a class has fewer cases than folds (a fold would lack it)."""
    counts = np.bincount(y, minlength=len(classes))
    small = [f"{classes[c]!r} ({counts[c]})" for c in range(len(classes)) if counts[c] < folds]
    if small:
        raise InputError(
            f"{what}: class {', '.join(small)} has fewer patients than the {folds} folds; "
            f"use fewer folds (--folds) or label more patients"
        )


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The test fold (0..folds-1) of every case: stratified by class, shuffled with `seed`."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds (got {folds})")
    fold_of = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold_of[test] = fold
    return fold_of


@dataclass
class CVResult:
    fold_of: np.ndarray  # [N] test fold of each case
    oof: np.ndarray  # [N, C] out-of-fold class probabilities
    per_fold: list[dict]  # metrics of each fold's test part, with n_train / n_test
    summary: dict  # {metric: {"mean", "sd"}} over folds
    pooled: dict  # the metrics of all out-of-fold predictions together


def cross_validate(vectors: np.ndarray, y: np.ndarray, n_classes: int, target: int, spec: LogRegSpec | MLPSpec,
                   fold_of: np.ndarray, seed: int = 0, progress: Progress | None = None, total_steps: int | None = None) -> CVResult:
    """Fit on all folds but one, predict the held-out fold; every fold once."""
    y = np.asarray(y, dtype=np.int64)
    folds = int(fold_of.max()) + 1
    oof = np.zeros((len(y), n_classes), dtype=np.float64)
    per_fold = []
    for fold in range(folds):
        with compute_threads():
            per_fold.append(_one_fold(vectors, y, n_classes, target, spec, fold_of, fold, seed, oof))
        if progress is not None:
            progress(fold + 1, total_steps or folds, f"fold {fold + 1}/{folds}: AUROC {per_fold[-1]['auroc']:.3f}")
    return CVResult(fold_of, oof, per_fold, summarize(per_fold), classification_metrics(y, oof, target))


def _one_fold(vectors, y, n_classes, target, spec, fold_of, fold, seed, oof) -> dict:
    test = fold_of == fold
    model = fit(spec, vectors[~test], y[~test], n_classes, seed=seed + fold)
    oof[test] = model.predict_proba(vectors[test])
    metrics = classification_metrics(y[test], oof[test], target)
    return {"fold": fold, "n_train": int((~test).sum()), "n_test": int(test.sum()), **metrics}


def few_shot(vectors: np.ndarray, y: np.ndarray, classes: list[str], target: int, ks=FEW_SHOT_KS, draws: int = 10,
             seed: int = 0, spec: LogRegSpec | None = None, progress: Progress | None = None) -> list[dict]:
    """For each k: `draws` random training sets of k cases per class, evaluated on all other cases.

    Draw d of k uses `numpy.random.default_rng([seed, k, d])`, so one point of the curve can be
    reproduced alone. A k is skipped (with the reason) when some class has no case left to test.
    """
    spec = spec or LogRegSpec()
    y = np.asarray(y, dtype=np.int64)
    members = [np.flatnonzero(y == c) for c in range(len(classes))]
    counts = [len(m) for m in members]
    curve, done, total = [], 0, len(ks) * draws
    for k in ks:
        short = [f"{classes[c]!r} has {counts[c]}" for c in range(len(classes)) if counts[c] <= k]
        if short:
            curve.append({"k": int(k), "skipped": f"needs more than {k} patients per class: {', '.join(short)}"})
            done += draws
            continue
        results = []
        for draw in range(draws):
            rng = np.random.default_rng([seed, int(k), draw])
            train = np.concatenate([rng.choice(m, size=k, replace=False) for m in members])
            test = np.ones(len(y), dtype=bool)
            test[train] = False
            with compute_threads():
                model = fit(spec, vectors[train], y[train], len(classes), seed=seed)
                results.append(classification_metrics(y[test], model.predict_proba(vectors[test]), target))
            done += 1
            if progress is not None:
                progress(done, total, f"k={k} draw {draw + 1}/{draws}")
        curve.append({"k": int(k), "draws": draws, "n_train": int(k * len(classes)), "n_test": int(len(y) - k * len(classes)),
                      **summarize(results)})
    return curve
