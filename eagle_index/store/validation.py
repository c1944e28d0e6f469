"""Checks every vector passes before it is stored or indexed."""

from __future__ import annotations

import numpy as np

from eagle_index.errors import InputError


def as_vector_matrix(values, dim: int | None, where: str) -> np.ndarray:
    """Return a C-contiguous float32 (N, D) matrix or raise InputError naming `where`.

    Refused: wrong dimension, NaN/inf entries, zero norm (cosine is undefined for them).
    """
    matrix = np.asarray(values)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise InputError(f"{where}: expected a vector or a (N, D) matrix, got shape {tuple(matrix.shape)}")
    if not np.issubdtype(matrix.dtype, np.number):
        raise InputError(f"{where}: expected numbers, got dtype {matrix.dtype}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if dim is not None and matrix.shape[1] != dim:
        raise InputError(f"{where}: vectors have dimension {matrix.shape[1]}, expected {dim}")
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{where}: row {bad} contains NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1)
    if (norms == 0).any():
        bad = int(np.flatnonzero(norms == 0)[0])
        raise InputError(f"{where}: row {bad} has zero norm (cosine similarity is undefined)")
    return matrix


def l2_normalized(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
