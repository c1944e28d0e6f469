"""One process owns the catalog (DuckDB allows one writer): who it is, and how to find it.

The owner holds an exclusive `flock` on `DATA/owner.lock` for its whole life — released by
the kernel even on kill -9 — and describes itself in `DATA/owner.json` (pid, role, API URL).
Other commands read that file to talk to the owner's API instead of opening the catalog.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from eagle_index.errors import CatalogError


# Data dirs this process owns. A second flock on a new file descriptor would fail even inside
# the owner itself, so the owner must recognise its own lock without asking the kernel.
_HELD_HERE: set[Path] = set()


@dataclass(frozen=True)
class OwnerInfo:
    pid: int
    role: str  # "serve" or "daemon"
    url: str | None
    started_at: str | None = None

    def describe(self) -> str:
        where = f" at {self.url}" if self.url else ""
        return f"eagle-index {self.role} (pid {self.pid}{where})"


def _paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "owner.lock", data_dir / "owner.json"


def current_owner(data_dir: Path) -> OwnerInfo | None:
    """The running owner of this data dir, or None (a stale owner.json is ignored)."""
    if Path(data_dir).resolve() in _HELD_HERE:
        return None
    lock_path, info_path = _paths(Path(data_dir))
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: someone owns the catalog
        else:
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
    try:
        data = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return OwnerInfo(pid=-1, role="process", url=None)
    if data.get("pid") == os.getpid():
        return None  # we are the owner
    return OwnerInfo(int(data.get("pid", -1)), data.get("role", "process"), data.get("url"), data.get("started_at"))


class Ownership:
    """Hold the catalog for this process; `describe()` is published once the URL is known."""

    def __init__(self, data_dir: Path, role: str):
        self.data_dir = Path(data_dir)
        self.role = role
        self._handle = None

    def acquire(self) -> "Ownership":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_path, _ = _paths(self.data_dir)
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise CatalogError(f"cannot start {self.role}: the data folder {self.data_dir} is already held by "
                               f"{_holder(self.data_dir)}; only one process may own it (stop that one first)") from None
        self._handle = handle
        _HELD_HERE.add(self.data_dir.resolve())
        return self

    def publish(self, url: str | None) -> None:
        from datetime import datetime, timezone

        from eagle_index.atomic import atomic_write_text

        _, info_path = _paths(self.data_dir)
        atomic_write_text(info_path, json.dumps({"pid": os.getpid(), "role": self.role, "url": url,
                                                 "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))

    def release(self) -> None:
        if self._handle is None:
            return
        _, info_path = _paths(self.data_dir)
        info_path.unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None
        _HELD_HERE.discard(self.data_dir.resolve())


def _holder(data_dir: Path) -> str:
    if Path(data_dir).resolve() in _HELD_HERE:
        return "this process"
    other = current_owner(data_dir)
    if other is None or other.pid < 0:
        return (f"another eagle-index process that has not described itself yet (no readable "
                f"{_paths(Path(data_dir))[1].name}; `fuser {_paths(Path(data_dir))[0]}` names it)")
    return other.describe()


def refuse_if_owned(data_dir: Path, action: str = "open the catalog") -> None:
    owner = current_owner(data_dir)
    if owner is not None:
        raise CatalogError(
            f"cannot {action}: the catalog in {data_dir} is in use by {owner.describe()}; "
            "run this through it (search, stats, status, ingest, labels import do so automatically) or stop it first"
        )
