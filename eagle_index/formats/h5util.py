"""Small helpers around h5py: open with a clear error, read datasets and attributes (atomic writes: eagle_index/atomic.py)."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from eagle_index.errors import InputError


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def open_h5(path: Path) -> Iterator["h5py.File"]:  # noqa: F821
    """Open an HDF5 file for reading; a missing, truncated or non-HDF5 file is an InputError."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    try:
        yield handle
    finally:
        handle.close()


def read_dataset(handle, name: str, path: Path):
    """Read a whole dataset, turning HDF5 read errors (truncated files) into InputError."""
    if name not in handle:
        raise InputError(f"{path}: dataset {name!r} is missing")
    try:
        return handle[name][()]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: dataset {name!r} cannot be read ({str(exc).splitlines()[0]})") from None


def text_attr(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
