"""Small helpers around h5py: open with a clear error, digest a file, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
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


_FILE_MODE: int | None = None


def file_mode() -> int:
    """The mode a plain new file gets under this process's umask (0666 & ~umask).

    Temp files from `tempfile.mkstemp` are 0600; files users share (exports, thumbnails,
    `embed --out`) get this mode before they are renamed into place. The umask is read from
    /proc (no race with other threads); elsewhere it is read once by setting it back.
    """
    global _FILE_MODE
    if _FILE_MODE is None:
        umask = None
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        if umask is None:
            umask = os.umask(0o022)
            os.umask(umask)
        _FILE_MODE = 0o666 & ~umask
    return _FILE_MODE


def share_like_new_file(path: Path) -> None:
    """Give a temp file the permissions a newly created file would have (umask honoured)."""
    os.chmod(path, file_mode())


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path in the target folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        share_like_new_file(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
