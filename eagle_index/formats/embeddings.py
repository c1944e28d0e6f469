"""Patient/slide embedding files: EAGLE output `.h5` and STAMP v2 encoder outputs.

- EAGLE: one file per cohort, one dataset per patient id, shape (D,), not normalized.
  Ids containing `/` become nested groups in h5py; they are read back with the full path, and
  the import then refuses them by name (a patient id must be one URL path segment:
  `eagle_index.identifiers`).

Each vector is checked as it is read, and a bad one is named by its file and its patient (or
slide) id: NaN or infinite values, values too large for float32 (how vectors are stored), and
vectors that are zero once stored as float32.
- STAMP v2: one file per slide or patient, dataset `feats` (D,) or (1, D), attrs `encoder`
  and `feat_type` ("slide" or "patient").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eagle_index.errors import InputError
from eagle_index.formats.h5util import open_h5, read_dataset, text_attr

STAMP_ENCODER_KINDS = {"eagle": "eagle", "chief": "chief", "chief-ctranspath": "chief"}


@dataclass
class EmbeddingFile:
    """What one embedding file holds: ids (patient or slide) and their vectors."""

    path: Path
    layout: str  # "eagle" or "stamp-v2"
    level: str  # "patient" or "slide"
    ids: list[str]
    vectors: np.ndarray
    encoder: str | None = None
    attrs: dict = field(default_factory=dict)


def read_embedding_file(path: Path) -> EmbeddingFile:
    path = Path(path)
    with open_h5(path) as handle:
        attrs = {k: text_attr(v) for k, v in handle.attrs.items()}
        if "feats" in handle and ("feat_type" in attrs or "encoder" in attrs):
            return _read_stamp_v2(path, handle, attrs)
        if "feats" in handle or "coords" in handle:
            raise InputError(f"{path}: looks like a tile-feature file (feats/coords); use `eagle-index import-features`")
        return _read_eagle(path, handle, attrs)


def _read_stamp_v2(path: Path, handle, attrs: dict) -> EmbeddingFile:
    feats = _numeric(np.asarray(read_dataset(handle, "feats", path)), "feats", path)
    if feats.ndim == 2 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.ndim != 1:
        raise InputError(f"{path}: dataset 'feats' has shape {feats.shape}, expected (D,) or (1, D) for a slide/patient embedding")
    level = attrs.get("feat_type") or "patient"
    if level not in ("slide", "patient"):
        raise InputError(f"{path}: feat_type {level!r} is not a slide or patient embedding")
    return EmbeddingFile(path, "stamp-v2", level, [path.stem], _as_float32(feats[None, :], path, f"{level} {path.stem!r}"),
                         attrs.get("encoder"), attrs)


def _read_eagle(path: Path, handle, attrs: dict) -> EmbeddingFile:
    import h5py

    names: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            names.append(name)

    try:
        handle.visititems(visit)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"{path}: cannot list datasets ({str(exc).splitlines()[0]})") from None
    if not names:
        raise InputError(f"{path}: no datasets found (expected one dataset per patient id)")
    rows = []
    for name in names:
        data = _numeric(np.asarray(read_dataset(handle, name, path)), name, path)
        if data.ndim == 2 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 1:
            raise InputError(f"{path}: dataset {name!r} has shape {data.shape}, expected one vector (D,) per patient")
        rows.append(_as_float32(data, path, f"patient {name!r}"))
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise InputError(f"{path}: datasets have different dimensions {sorted(dims)}")
    return EmbeddingFile(path, "eagle", "patient", names, np.stack(rows), attrs.get("extractor"), attrs)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _as_float32(data: np.ndarray, path: Path, what: str) -> np.ndarray:
    """The vector(s) as float32, or one InputError naming the file and `what` (e.g. "patient 'P-1'"):
    NaN or infinite values, values too large for float32, all zeros once stored as float32."""
    wide = data.astype(np.float64)
    if not np.isfinite(wide).all():
        raise InputError(f"{path}: {what}: the vector contains NaN or infinite values")
    if wide.size and np.abs(wide).max() > FLOAT32_MAX:
        raise InputError(f"{path}: {what}: value {wide.flat[np.abs(wide).argmax()]:.3g} is too large for float32 "
                         f"(vectors are stored as float32, |x| at most {FLOAT32_MAX:.3g})")
    with np.errstate(under="ignore"):
        out = data.astype(np.float32)
    if out.size and not np.all(np.any(out, axis=-1)):
        raise InputError(f"{path}: {what}: the vector is all zeros once stored as float32 (cosine similarity is undefined)")
    return out


def _numeric(data: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Refuse datasets of strings, compounds or objects (a vector must be numbers)."""
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)) or data.dtype == bool:
        raise InputError(f"{path}: dataset {name!r} holds {data.dtype} values, not numbers (expected one float vector per id)")
    return data


def write_eagle_file(path: Path, ids: list[str], vectors, extractor: str | None = None, attrs: dict | None = None) -> None:
    """Write the EAGLE output layout (one float32 dataset per patient id), atomically."""
    import h5py

    from eagle_index.atomic import atomic_path

    for pid in ids:
        if "/" in pid:
            raise InputError(f"{path}: patient id {pid!r} contains '/', which HDF5 would turn into a group")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            if extractor:
                handle.attrs["extractor"] = extractor
            handle.attrs.update(attrs or {})
            for pid, vec in zip(ids, vectors):
                handle.create_dataset(pid, data=np.asarray(vec, dtype=np.float32))
