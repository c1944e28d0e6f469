"""Content fingerprints of slide files: the same slide renamed or copied is the same slide."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from eagle_index.errors import SlideError

CHUNK = 1 << 22


def companion_files(path: Path) -> list[Path]:
    """Files that belong to a multi-file slide (MRXS: the folder named after the file's stem)."""
    if path.suffix.lower() == ".mrxs":
        folder = path.with_suffix("")
        if folder.is_dir():
            return sorted(p for p in folder.rglob("*") if p.is_file())
    return []


def open_regular(path: Path):
    """`path` opened for reading in binary, only if it is a regular file: a FIFO, socket or device is refused
    with SlideError ("not a regular file") instead of blocking the caller in open() (the open is non-blocking
    and the check is made on the opened descriptor, so a file swapped for a FIFO meanwhile is refused too)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise SlideError(f"{path}: not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SlideError(f"{path}: not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def slide_fingerprint(path: Path) -> str:
    """SHA-256 over the slide's bytes (and its companion files, by relative name)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        for part in [path, *companion_files(path)]:
            digest.update(str(part.relative_to(path.with_suffix(""))).encode() if part != path else b"main")
            with open_regular(part) as handle:
                while block := handle.read(CHUNK):
                    digest.update(block)
    except OSError as exc:
        raise SlideError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return f"sha256:{digest.hexdigest()}"
