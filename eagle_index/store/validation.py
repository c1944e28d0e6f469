"""Checks every vector passes before it is stored or indexed.

Norms are computed in float64: a float32 sum of squares overflows for entries above ~1e19
(and underflows below ~1e-23), which would turn a valid direction into an all-zero "unit"
vector. A vector is refused when it is not finite as float32 (how it is stored), or when its
normalisation is not finite and non-zero.
"""

from __future__ import annotations

import numpy as np

from eagle_index.errors import InputError

_CHUNK = 8192  # rows per float64 block (bounded memory for large matrices)


def _norms64(matrix: np.ndarray) -> np.ndarray:
    out = np.empty(len(matrix), dtype=np.float64)
    for start in range(0, len(matrix), _CHUNK):
        block = matrix[start:start + _CHUNK].astype(np.float64)
        out[start:start + _CHUNK] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


def as_vector_matrix(values, dim: int | None, where: str) -> np.ndarray:
    """Return a C-contiguous float32 (N, D) matrix or raise InputError naming `where`.

    Refused: wrong dimension, non-numeric data, NaN/inf entries (also values beyond float32's
    range), rows whose normalisation is not finite and non-zero (cosine is undefined for them).
    """
    matrix = np.asarray(values)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise InputError(f"{where}: expected a vector or a (N, D) matrix, got shape {tuple(matrix.shape)}")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise InputError(f"{where}: expected numbers, got dtype {matrix.dtype}")
    if dim is not None and matrix.shape[1] != dim:
        raise InputError(f"{where}: vectors have dimension {matrix.shape[1]}, expected {dim}")
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{where}: row {bad} contains NaN or infinite values")
    with np.errstate(over="ignore", under="ignore"):
        stored = np.ascontiguousarray(matrix, dtype=np.float32)
    finite = np.isfinite(stored).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{where}: row {bad} has values too large for float32, which vectors are stored in (|x| > 3.4e38)")
    norms = _norms64(stored)
    bad_rows = ~(np.isfinite(norms) & (norms > 0))
    if bad_rows.any():
        bad = int(np.flatnonzero(bad_rows)[0])
        raise InputError(f"{where}: row {bad} has zero norm (cosine similarity is undefined)")
    return stored


def l2_normalized(matrix: np.ndarray) -> np.ndarray:
    """Unit rows as float32, normalised in float64 (no overflow for large finite entries)."""
    matrix = np.asarray(matrix)
    out = np.empty(matrix.shape, dtype=np.float32)
    for start in range(0, len(matrix), _CHUNK):
        block = matrix[start:start + _CHUNK].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + _CHUNK] = block / norms
    return out
