"""The two probe models, their fitting, and their storage as safetensors bytes.

Preprocessing travels with the model: every fitted probe L2-normalizes its input vectors
(the index compares normalized vectors, and the paper's probes see normalized EAGLE vectors),
then - the MLP only, by default - standardizes each feature with the mean and scale of its
training data. `FittedProbe.predict_proba` takes raw stored vectors and applies both, in
numpy, so applying a probe needs neither scikit-learn objects nor torch, and nothing is pickled.

- `logreg`: scikit-learn LogisticRegression, lbfgs, L2, C = 1.0, max_iter 10 000, balanced
  class weights (multinomial for more than two classes).
- `mlp`: input -> 256 -> SiLU -> dropout -> classes; AdamW (lr 1e-4, weight decay 1e-2),
  one-cycle schedule, 32 epochs, batches of 64, class-weighted cross-entropy; early stopping
  on the loss of an inner stratified validation split (20 % of the training data), keeping
  the weights of the best epoch. The dropout rate (0.25) is our choice; the paper gives none.
  Deterministic: initialisation, shuffling and dropout masks come from one seeded
  `torch.Generator` (no process-global RNG state is touched, so training can run in a thread).

Threads: fitting runs with one BLAS thread (and one torch thread for the MLP) - see
`compute_threads`. These models are small; on a busy 2-core machine a second BLAS thread made
a logistic fit 10-70x *slower* (threads spinning while waiting for a core), one thread is
never much slower. The limit is process-wide while a fit runs (threadpoolctl and
`torch.set_num_threads` have no per-thread setting) and is restored afterwards.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from eagle_index.errors import InputError

BLOB_FORMAT = "eagle-index-probe"
BLOB_VERSION = "1"


@dataclass(frozen=True)
class LogRegSpec:
    model: str = field(default="logreg", init=False)
    C: float = 1.0
    max_iter: int = 10_000
    class_weight: str = "balanced"
    standardize: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MLPSpec:
    model: str = field(default="mlp", init=False)
    hidden: int = 256
    dropout: float = 0.25
    lr: float = 1e-4
    weight_decay: float = 1e-2
    epochs: int = 32
    batch_size: int = 64
    patience: int = 8
    validation_fraction: float = 0.2
    standardize: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


MODELS = {"logreg": LogRegSpec, "mlp": MLPSpec}


def model_spec(name: str, **overrides) -> LogRegSpec | MLPSpec:
    """The spec of a model by name, with the paper's defaults unless overridden."""
    if name not in MODELS:
        raise InputError(f"unknown probe model {name!r} (choose from: {', '.join(MODELS)})")
    try:
        return MODELS[name](**overrides)
    except TypeError as exc:
        raise InputError(f"bad parameters for probe model {name!r}: {exc}") from None


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class FittedProbe:
    """Fitted parameters (numpy arrays) + what is needed to apply them to raw vectors."""

    model: str
    n_classes: int
    dim: int
    tensors: dict[str, np.ndarray]
    info: dict[str, str] = field(default_factory=dict)

    def _features(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InputError(f"this probe takes {self.dim}-d vectors, got shape {tuple(vectors.shape)}")
        z = l2_normalize(vectors).astype(np.float64)
        if "scaler.mean" in self.tensors:
            z = (z - self.tensors["scaler.mean"]) / self.tensors["scaler.scale"]
        return z

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] (float64) of raw (unnormalized) vectors."""
        z = self._features(vectors)
        t = {k: v.astype(np.float64) for k, v in self.tensors.items()}
        if self.model == "logreg":
            logits = z @ t["coef"].T + t["intercept"]
            if t["coef"].shape[0] == 1:  # binary: sklearn's one logit for class 1
                p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
                return np.stack([1.0 - p1, p1], axis=1)
            return _softmax(logits)
        hidden = z @ t["fc1.weight"].T + t["fc1.bias"]
        hidden = hidden / (1.0 + np.exp(-hidden))  # SiLU
        return _softmax(hidden @ t["fc2.weight"].T + t["fc2.bias"])

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        metadata = {"format": BLOB_FORMAT, "version": BLOB_VERSION, "model": self.model,
                    "n_classes": str(self.n_classes), "dim": str(self.dim), "normalize": "l2", **self.info}
        return save({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, metadata=metadata)

    @classmethod
    def from_bytes(cls, blob: bytes) -> FittedProbe:
        from safetensors.numpy import load

        metadata = blob_metadata(blob)
        if metadata.get("format") != BLOB_FORMAT or metadata.get("version") != BLOB_VERSION:
            raise InputError(f"stored probe parameters have an unknown format ({metadata.get('format')} {metadata.get('version')})")
        info = {k: v for k, v in metadata.items() if k not in {"format", "version", "model", "n_classes", "dim", "normalize"}}
        return cls(metadata["model"], int(metadata["n_classes"]), int(metadata["dim"]), dict(load(blob)), info)


def blob_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` of safetensors bytes (header: u64 little-endian length, then JSON)."""
    if len(blob) < 8:
        raise InputError("stored probe parameters are truncated")
    (length,) = struct.unpack("<Q", blob[:8])
    try:
        header = json.loads(blob[8 : 8 + length])
    except ValueError:
        raise InputError("stored probe parameters are not safetensors") from None
    return dict(header.get("__metadata__") or {})


PROBE_THREADS = 1


@contextmanager
def compute_threads(n: int = PROBE_THREADS, torch_too: bool = False):
    """Run the block with `n` BLAS threads (and `n` torch threads), restoring them afterwards."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        if not torch_too:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _scaler(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = z.mean(axis=0)
    scale = z.std(axis=0)
    return mean, np.where(scale < 1e-8, 1.0, scale)


def fit(spec: LogRegSpec | MLPSpec, vectors: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> FittedProbe:
    """Fit a probe on raw vectors and class indices 0..n_classes-1 (every class present)."""
    y = np.asarray(y, dtype=np.int64)
    missing = sorted(set(range(n_classes)) - set(np.unique(y).tolist()))
    if missing:
        raise InputError(f"the training data lack class(es) {missing}")
    if isinstance(spec, LogRegSpec):
        with compute_threads():
            return _fit_logreg(spec, vectors, y, n_classes, seed)
    with compute_threads(torch_too=True):
        return _fit_mlp(spec, vectors, y, n_classes, seed)


def _fit_logreg(spec: LogRegSpec, vectors: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    z = l2_normalize(vectors).astype(np.float64)
    tensors: dict[str, np.ndarray] = {}
    if spec.standardize:
        mean, scale = _scaler(z)
        z = (z - mean) / scale
        tensors.update({"scaler.mean": mean, "scaler.scale": scale})
    model = LogisticRegression(C=spec.C, solver="lbfgs", max_iter=spec.max_iter, class_weight=spec.class_weight, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(z, y)
    tensors.update({"coef": model.coef_.astype(np.float64), "intercept": model.intercept_.astype(np.float64)})
    iterations = int(np.max(model.n_iter_))
    info = {"iterations": str(iterations), "converged": str(iterations < spec.max_iter).lower()}
    return FittedProbe("logreg", n_classes, int(z.shape[1]), tensors, info)


def _inner_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified train/validation indices, or None when a class is too small to split."""
    from sklearn.model_selection import StratifiedShuffleSplit

    counts = np.bincount(y)
    n_val = max(int(round(fraction * y.size)), len(counts))
    if counts.min() < 2 or y.size - n_val < len(counts):
        return None
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    return next(splitter.split(np.zeros(y.size), y))


def _fit_mlp(spec: MLPSpec, vectors: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> FittedProbe:
    import torch
    from torch import nn
    from torch.nn import functional as F

    z = l2_normalize(vectors)
    split = _inner_split(y, spec.validation_fraction, seed)
    train_idx, val_idx = split if split is not None else (np.arange(y.size), None)
    tensors: dict[str, np.ndarray] = {}
    if spec.standardize:
        mean, scale = _scaler(z[train_idx].astype(np.float64))
        z = ((z - mean) / scale).astype(np.float32)
        tensors.update({"scaler.mean": mean, "scaler.scale": scale})

    gen = torch.Generator().manual_seed(int(seed))
    fc1, fc2 = nn.Linear(z.shape[1], spec.hidden), nn.Linear(spec.hidden, n_classes)
    with torch.no_grad():
        for layer in (fc1, fc2):  # torch's default Linear initialisation, from our generator
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            bound = 1.0 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    params = list(fc1.parameters()) + list(fc2.parameters())

    def forward(x, train: bool):
        hidden = F.silu(fc1(x))
        if train and spec.dropout > 0:
            keep = torch.rand(hidden.shape, generator=gen) >= spec.dropout
            hidden = hidden * keep / (1.0 - spec.dropout)
        return fc2(hidden)

    x_train, y_train = torch.from_numpy(z[train_idx]), torch.from_numpy(y[train_idx])
    counts = np.bincount(y[train_idx], minlength=n_classes).astype(np.float64)
    weight = torch.tensor(y_train.numel() / (n_classes * np.maximum(counts, 1.0)), dtype=torch.float32)
    steps_per_epoch = math.ceil(len(train_idx) / spec.batch_size)
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch)

    best_loss, best_state, best_epoch, epochs_run = math.inf, None, spec.epochs, 0
    for epoch in range(spec.epochs):
        order = torch.randperm(len(train_idx), generator=gen)
        for start in range(0, len(order), spec.batch_size):
            batch = order[start : start + spec.batch_size]
            loss = F.cross_entropy(forward(x_train[batch], True), y_train[batch], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        epochs_run = epoch + 1
        if val_idx is None:
            continue
        with torch.no_grad():
            val_loss = float(F.cross_entropy(forward(torch.from_numpy(z[val_idx]), False), torch.from_numpy(y[val_idx]), weight=weight))
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch = val_loss, epoch + 1
            best_state = [p.detach().clone() for p in params]
        elif epoch + 1 - best_epoch >= spec.patience:
            break
    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(params, best_state):
                p.copy_(saved)
    tensors.update({
        "fc1.weight": fc1.weight.detach().numpy().copy(), "fc1.bias": fc1.bias.detach().numpy().copy(),
        "fc2.weight": fc2.weight.detach().numpy().copy(), "fc2.bias": fc2.bias.detach().numpy().copy(),
    })
    info = {"epochs_run": str(epochs_run), "best_epoch": str(best_epoch if val_idx is not None else epochs_run),
            "validation_loss": "" if val_idx is None else f"{best_loss:.6g}", "hidden": str(spec.hidden)}
    return FittedProbe("mlp", n_classes, int(z.shape[1]), tensors, info)
