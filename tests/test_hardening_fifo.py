"""Issue 24 item 4: a FIFO (or any non-regular file) in a watched folder never blocks a thread.

Opening a FIFO for reading blocks until a writer comes: 8 `POST /api/v1/jobs` of one took every
HTTP thread. Only regular files are opened (fingerprint: stat + non-blocking open + fstat); the jobs
API answers a 400 naming the path; the watcher skips it and says so once. Each call runs in a thread
joined with a timeout, so a regression fails instead of hanging the test run.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from test_web_fixtures import archive_copy, error_of

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


def _within(seconds: float, call):
    """call() in a daemon thread; its result (or exception) if it ends within `seconds`, else a test failure."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _unblock(call)
        pytest.fail(f"still blocked after {seconds} s (a FIFO was opened)")
    if "error" in out:
        raise out["error"]
    return out["value"]


FIFOS: list[Path] = []


def _unblock(_call):
    """Let a thread stuck in open() of our FIFOs go (a writer end opened and closed)."""
    for fifo in FIFOS:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


@pytest.fixture
def folder(tmp_path):
    fifo = tmp_path / "scan-01.svs"
    os.mkfifo(fifo)
    FIFOS.append(fifo)
    yield tmp_path
    _unblock(None)
    FIFOS.remove(fifo)


def test_fingerprint_refuses_a_fifo_without_blocking(folder):
    from eagle_index.errors import SlideError
    from eagle_index.fingerprint import slide_fingerprint

    with pytest.raises(SlideError, match="not a regular file"):
        _within(10, lambda: slide_fingerprint(folder / "scan-01.svs"))
    (folder / "real.svs").write_bytes(b"slide bytes")
    assert _within(10, lambda: slide_fingerprint(folder / "real.svs")).startswith("sha256:")


def test_jobs_api_answers_a_fifo_with_a_400(folder, tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService
    from web import create_app

    with EagleService(Settings(data_dir=archive_copy(tmp_path_factory, "fifo-jobs"), models="tiny", device="cpu")) as svc:
        client = create_app(None, service=svc, owner={"role": "serve", "roots": [str(folder)]}).test_client()
        fifo = str(folder / "scan-01.svs")
        response = _within(20, lambda: client.post("/api/v1/jobs", json={"paths": [fifo]}))
        message = error_of(response, 400, "paths")
        assert fifo in message and "not a regular file" in message
        # a folder holding the FIFO: the FIFO is not a slide file, nothing is opened
        response = _within(20, lambda: client.post("/api/v1/jobs", json={"paths": [str(folder)]}))
        assert response.status_code == 202 and response.get_json()["jobs"] == []


def test_watcher_skips_a_fifo_and_says_so_once(folder, caplog):
    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher

    class Queue:
        def __init__(self):
            self.enqueued = []

        def known_path(self, path):
            return None

        def enqueue(self, fingerprint, path, patient, mpp=None, note=None):
            self.enqueued.append(path)
            return "queued", len(self.enqueued)

    (folder / "PX-real.svs").write_bytes(b"slide bytes")
    queue = Queue()
    watcher = Watcher([folder], queue, PatientResolver(), settle_seconds=0.0)
    with caplog.at_level(logging.WARNING, logger="eagle_index.ingest.watcher"):
        for _ in range(3):
            _within(10, watcher.scan_once)
    assert queue.enqueued == [str(folder / "PX-real.svs")]
    said = [r.getMessage() for r in caplog.records if "scan-01.svs" in r.getMessage()]
    assert len(said) == 1 and "not a regular file" in said[0]
    # a file swapped for a FIFO between the listing and the hash is refused by the fingerprint, not opened
    assert _within(10, lambda: watcher._enqueue(folder / "scan-01.svs")) is None
