"""eagle_index.atomic: temp file + rename, with the mode an ordinary new file gets, safe across threads."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from eagle_index import atomic
from eagle_index.atomic import atomic_path, atomic_write_bytes


def _umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("no Umask line in /proc/self/status")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_write_gets_the_mode_of_a_new_file_and_leaves_no_temp(tmp_path):
    target = atomic_write_bytes(tmp_path / "sub" / "out.bin", b"abc")
    assert target.read_bytes() == b"abc" and _mode(target) == 0o666 & ~_umask()
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "sub" / "out.bin") as tmp:
            assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")  # the name server.py cleans up
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"abc" and sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_writes_never_change_the_process_umask(tmp_path, monkeypatch):
    """os.umask sets the mask for every thread: reading it that way while another thread creates a
    file or a folder gives that one the wrong mode. The mask is read once, at import."""
    def umask(_mask):
        raise AssertionError("os.umask called after import")

    monkeypatch.setattr(os, "umask", umask)
    target = atomic_write_bytes(tmp_path / "x.bin", b"x")
    assert _mode(target) == atomic.FILE_MODE == 0o666 & ~_umask()


def test_folders_made_by_other_threads_keep_their_mode_while_files_are_written(tmp_path):
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, between any two bytecodes
    stop = threading.Event()
    made: list[Path] = []

    def make_dirs():
        i = 0
        while not stop.is_set():
            path = tmp_path / "dirs" / str(i)
            path.mkdir(parents=True)
            made.append(path)
            i += 1

    def write_files(n: int):
        for i in range(300):
            atomic_write_bytes(tmp_path / "files" / f"{n}-{i}", b"x", durable=False)

    maker = threading.Thread(target=make_dirs)
    writers = [threading.Thread(target=write_files, args=(n,)) for n in range(4)]
    try:
        maker.start()
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
    finally:
        stop.set()
        maker.join()
        sys.setswitchinterval(interval)
    mask = _umask()
    wrong_dirs = [p for p in made if _mode(p) != 0o777 & ~mask]
    wrong_files = [p for p in (tmp_path / "files").iterdir() if _mode(p) != 0o666 & ~mask]
    assert len(made) > 0 and not wrong_dirs and not wrong_files, (len(wrong_dirs), len(made), len(wrong_files))
