"""Probes: lightweight biomarker models trained on stored patient vectors (pure functions).

- `metrics`: AUROC, AUPRC (average precision), balanced accuracy, F1; mean ± sd over folds.
- `models`: logistic regression and the paper's MLP; parameters saved as safetensors bytes,
  predictions in numpy (applying a probe needs neither scikit-learn objects nor torch).
- `cv`: patient-level stratified k-fold cross-validation and the few-shot curve.
- `delong`: fast DeLong (Sun & Xu 2014) for two correlated AUROCs; Benjamini-Hochberg.

Nothing here touches the catalog: `eagle_index.probes.ProbeService` loads the vectors and
labels, calls these functions and stores the result.
"""
