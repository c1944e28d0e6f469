"""The one way eagle-index writes a file atomically: a temp file beside the target, then a rename.

Why: a reader (or a crash) must see the old file or the new one, never half of one. The temp
file is fsynced before the rename and gets the permissions an ordinary new file would get
(the process umask, read once at import), since mkstemp's 0600 would make exports unreadable to colleagues.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _process_umask() -> int:
    """The umask, read without changing it where Linux tells it (/proc/self/status, since 4.7).

    Elsewhere it is set and set back once, at import: `os.umask` is process-wide, so doing that
    while other threads create files or folders would give theirs the wrong mode."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The mode an ordinary new file gets (open(path, "w")). Read once: the umask of a running process
# does not change (eagle-index never sets it after start).
FILE_MODE = 0o666 & ~_process_umask()


@contextmanager
def atomic_path(path: str | Path, mkdir: bool = True, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path in the target's folder; it replaces `path` only if the block succeeds.

    mkdir=False: a missing folder is the caller's error (FileNotFoundError), not created.
    durable=False skips the fsync (caches that can be rebuilt: a crash may lose the file, never tear it).
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, mkdir: bool = True, durable: bool = True) -> Path:
    with atomic_path(path, mkdir, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, mkdir: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mkdir)
