"""The real daemon as a subprocess: inbox drops, bad slides, duplicates, slow copies, crashes, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from slide_fixtures import write_pyramidal_tiff

FIXTURES = SHARED_DATA / "openslide-fixtures"
BOX = 448.0
TIMEOUT = 240
SETTLE = 1.5  # the daemon's --settle-seconds


def _slide(folder: Path, name: str, cols: int = 6, rows: int = 5, seed: int = 0, texture: str = "cells") -> Path:
    return write_pyramidal_tiff(folder / f"{name}.tiff", mpp=0.5, size_um=(cols * BOX, rows * BOX),
                                tissue_boxes_um=[(BOX, BOX, (cols - 2) * BOX, (rows - 2) * BOX)],
                                seed=seed, texture=texture).path


@pytest.fixture(scope="module")
def good_slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("good")
    names = ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2", "TCGA-AA-0002-01Z-00-DX1",
             "TCGA-AA-0002-01Z-00-DX2", "TCGA-AA-0003-01Z-00-DX1", "TCGA-AA-0004-01Z-00-DX1"]
    return [_slide(folder, n, cols=5 + i % 3, rows=5, seed=i, texture="fat" if i % 2 else "cells") for i, n in enumerate(names)]


class Daemon:
    def __init__(self, data: Path, inbox: Path, *extra: str):
        self.data = data
        env = {**os.environ, "EAGLE_INDEX_LOG": "INFO"}
        self.log = open(data.parent / f"daemon-{data.name}-{time.time_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eagle_index", "daemon", "--watch", str(inbox), "--models", "tiny", "--device", "cpu",
             "--settle-seconds", str(SETTLE), "--poll-seconds", "0.3", "--retry-backoff", "0.2", "--max-attempts", "2",
             "--data-dir", str(data), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.url = self._wait_url()

    def _wait_url(self) -> str:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            try:
                info = json.loads((self.data / "owner.json").read_text())
                if info["pid"] == self.proc.pid:
                    return info["url"]
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError("daemon did not start")

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/v1/status", timeout=30) as response:
            return json.loads(response.read())

    def wait(self, predicate, what: str) -> dict:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}: {self.status()}\n{Path(self.log.name).read_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()


def _catalog_state(data: Path) -> tuple[dict, dict]:
    """(patient -> eagle vector, kind -> FAISS count) read with the library, daemon stopped."""
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    with EagleService(Settings(data_dir=data, models="tiny", device="cpu")) as service:
        eagle = next(s for s in service.catalog.vector_sets() if s.kind == "eagle")
        ids, matrix = service.catalog.load_vectors("eagle", eagle.signature)
        names = service.catalog.external_ids(ids)
        counts = {s.kind: (s.count, service.vectors.get(s.kind, s.signature).ntotal) for s in service.catalog.vector_sets()}
        return {names[int(i)]: row for i, row in zip(ids, matrix)}, counts


def _slow_copy(src: Path, dst: Path, chunks: int = 16, pause: float = SETTLE / 15) -> None:
    """A copy that takes longer than the settle time, with pauses far shorter than it: the watcher
    must not take the growing file. (The settle rule itself is tested on a clock the test moves, in
    test_a_file_being_written_is_enqueued_only_once_it_has_settled; the daemon test checks the
    partial file never got a job of its own.)"""
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with open(dst, "wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start:start + step])
            handle.flush()
            time.sleep(pause)


def test_a_file_being_written_is_enqueued_only_once_it_has_settled(tmp_path, good_slides, monkeypatch):
    """The watcher's settle rule, in process, on a clock the test moves (no race with the writer):
    each chunk of a slow copy sits unchanged for just under the settle time, and nothing is queued
    until the complete file has been unchanged for the whole settle time."""
    from types import SimpleNamespace

    from eagle_index.config import Settings
    from eagle_index.fingerprint import slide_fingerprint
    from eagle_index.ingest import watcher as watching
    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.service import EagleService

    clock = [1000.0]
    monkeypatch.setattr(watching, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    source, target = good_slides[4], inbox / good_slides[4].name
    with EagleService(Settings(data_dir=tmp_path / "data", models="tiny", device="cpu")) as service:
        watcher = watching.Watcher([inbox], service.jobs, PatientResolver(None, None), settle_seconds=SETTLE)
        data = source.read_bytes()
        step = len(data) // 8 + 1
        with open(target, "wb") as handle:
            for start in range(0, len(data), step):
                handle.write(data[start:start + step])
                handle.flush()
                for _ in range(3):  # scans while this chunk stays unchanged for 0.98 x the settle time
                    assert watcher.scan_once() == [], f"enqueued after {start + step} of {len(data)} bytes"
                    clock[0] += SETTLE * 0.98 / 3
        assert watcher.scan_once() == []  # complete, but not yet unchanged for the settle time
        clock[0] += SETTLE * 0.02 + 1e-6
        [queued] = watcher.scan_once()
        assert queued["state"] == "queued" and queued["file"] == str(target)
        assert watcher.scan_once() == []  # once
        assert [(j["file"], j["state"]) for j in service.jobs.jobs()] == [(str(target), "queued")]
        assert service.jobs.known_path(str(target)).fingerprint == slide_fingerprint(source)  # the whole file


@pytest.mark.skipif(not FIXTURES.exists(), reason="../shared/data/openslide-fixtures absent")
def test_daemon_ingests_good_slides_once_and_survives_bad_ones(tmp_path, good_slides):
    inbox, data = tmp_path / "inbox", tmp_path / "data"
    inbox.mkdir()
    daemon = Daemon(data, inbox)
    for slide in good_slides[:4]:
        shutil.copy(slide, inbox / slide.name)
    shutil.copy(FIXTURES / "unopenable.tiff", inbox / "unopenable.tiff")
    shutil.copy(FIXTURES / "unreadable.svs", inbox / "unreadable.svs")
    raw = good_slides[4].read_bytes()
    (inbox / "TCGA-AA-0009-01Z-00-DX1.tiff").write_bytes(raw[: len(raw) // 3])  # truncated copy
    _slow_copy(good_slides[4], inbox / good_slides[4].name)  # written in chunks over seconds
    shutil.copy(good_slides[5], inbox / good_slides[5].name)
    (inbox / "again").mkdir()
    shutil.copy(good_slides[5], inbox / "again" / "renamed-copy-of-0004.tiff")  # same bytes, another name
    status = daemon.wait(lambda s: s["queue"]["done"] == 6 and s["queue"]["failed"] == 3 and s["queue"]["queued"] == 0
                         and s["queue"]["running"] == 0, "6 done and 3 failed")
    failures = {Path(f["file"]).name: f["error"] for f in status["failures"]}
    assert set(failures) == {"unopenable.tiff", "unreadable.svs", "TCGA-AA-0009-01Z-00-DX1.tiff"}
    assert all(name in error for name, error in failures.items())
    assert daemon.proc.poll() is None  # still alive after three bad slides
    assert status["index"] and {e["kind"]: e["vectors"] for e in status["index"]}["eagle"] == 4
    assert daemon.stop(signal.SIGTERM) == 0
    assert not (data / "owner.json").exists()
    vectors, counts = _catalog_state(data)
    # The same bytes under two names: whichever the watcher sees settled first becomes the slide (directory
    # listing order and the machine's load decide), the other is a duplicate; never both.
    copy_won = "renamed-copy-of-0004" in vectors
    fourth = "renamed-copy-of-0004" if copy_won else "TCGA-AA-0004"
    assert sorted(vectors) == sorted(["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003", fourth])
    assert all(catalog == index for catalog, index in counts.values())
    from sqlalchemy import select

    from eagle_index.store.catalog import Catalog
    from eagle_index.store.models import Job, Slide

    catalog = Catalog.open(data / "catalog.duckdb")
    with catalog.transaction() as session:
        rows = session.execute(select(Slide.name, Slide.status)).all()
        jobs = session.execute(select(Job.path, Job.state)).all()
    catalog.close()
    done = sorted(name for name, state in rows if state == "done")
    expected = sorted(("renamed-copy-of-0004" if copy_won and p.stem.startswith("TCGA-AA-0004") else p.stem) for p in good_slides)
    assert done == expected  # each good slide once (as itself or as its renamed copy), never twice
    assert [name for name, state in rows if state == "failed"] == []  # failed slides are failed jobs, not slide rows
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    with EagleService(Settings(data_dir=data), create=False) as service:
        stats = service.stats()
    assert stats["failed"] == 3 and stats["patients"] == 4  # no patient was made from a failed slide
    slow = str(inbox / good_slides[4].name)
    assert [(path, state) for path, state in jobs if path == slow] == [(slow, "done")]  # its partial content never got a job


def _tissue_tiles(path: Path) -> int:
    """How many tiles the worker will embed for this slide (the daemon tiles with the default settings)."""
    from eagle_index.slides import open_slide, tissue_grid

    with open_slide(path) as slide:
        return len(tissue_grid(slide))


def _mid_job(daemon: "Daemon", slide: Path, total: int) -> int:
    """Wait for the worker's progress on `slide` and check most of it is still to do.

    The worker reports progress every 2 s of embedding; seen at most half way, the job has seconds
    of work left (half of `total` tiles), against the milliseconds between this answer and the
    test's next step. A machine so fast that the first report comes later fails here, loudly
    (make the slide bigger), instead of the test passing on a job that had already finished."""
    def tiles(status: dict) -> int:
        return max([(r.get("progress") or {}).get("tiles", 0) for r in status["running"] if Path(r["file"]).name == slide.name] or [0])

    def finished() -> bool:
        return any('"job_done"' in line and slide.name in line for line in Path(daemon.log.name).read_text().splitlines())

    seen = tiles(daemon.wait(lambda s: tiles(s) > 0 or finished(), f"{slide.name} in progress"))
    assert 0 < seen <= total // 2, (f"{slide.name}: {seen} of {total} tiles embedded at the first progress report "
                                    "(0: finished before any); use a bigger slide")
    return seen


def _jobs_of(data: Path) -> dict[str, tuple[str, int]]:
    """file name -> (state, attempts), read from the catalog with the owner stopped (or killed)."""
    from sqlalchemy import select

    from eagle_index.store.catalog import Catalog
    from eagle_index.store.models import Job

    catalog = Catalog.open(data / "catalog.duckdb")
    try:
        with catalog.transaction() as session:
            return {Path(path).name: (state, attempts) for path, state, attempts in
                    session.execute(select(Job.path, Job.state, Job.attempts)).all()}
    finally:
        catalog.close()


def test_sigkill_mid_job_then_restart_equals_uninterrupted_run(tmp_path, good_slides):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    big = _slide(tmp_path, "TCGA-BB-0001-01Z-00-DX1", cols=28, rows=24, seed=7)  # several seconds of work
    total = _tissue_tiles(big)
    for slide in [big, *good_slides[:2]]:
        shutil.copy(slide, inbox / slide.name)
    daemon = Daemon(tmp_path / "killed", inbox)
    _mid_job(daemon, big, total)
    daemon.stop(signal.SIGKILL)
    # Really interrupted: the killed process left the job running (first attempt), its slide not stored.
    assert _jobs_of(tmp_path / "killed")[big.name] == ("running", 1)
    restarted = Daemon(tmp_path / "killed", inbox)
    restarted.wait(lambda s: s["queue"]["done"] == 3 and s["queue"]["queued"] == 0 and s["queue"]["running"] == 0, "3 done")
    assert restarted.stop() == 0
    # embedded again after the restart; the death is not an attempt (issue 24 item 5: no evidence against the slide)
    assert _jobs_of(tmp_path / "killed")[big.name] == ("done", 1)
    assert any('"job_done"' in line and big.name in line for line in Path(restarted.log.name).read_text().splitlines())
    reference = Daemon(tmp_path / "clean", inbox)
    reference.wait(lambda s: s["queue"]["done"] == 3 and s["queue"]["queued"] == 0 and s["queue"]["running"] == 0, "3 done")
    assert reference.stop() == 0
    assert _jobs_of(tmp_path / "clean")[big.name] == ("done", 1)
    killed_vectors, killed_counts = _catalog_state(tmp_path / "killed")
    clean_vectors, clean_counts = _catalog_state(tmp_path / "clean")
    assert sorted(killed_vectors) == sorted(clean_vectors) == ["TCGA-AA-0001", "TCGA-BB-0001"]
    for patient in clean_vectors:
        np.testing.assert_array_equal(killed_vectors[patient], clean_vectors[patient])
    assert killed_counts == clean_counts and all(c == n for c, n in killed_counts.values())


def test_sigterm_during_a_job_requeues_it_and_exits_cleanly(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    big = _slide(tmp_path, "TCGA-CC-0001-01Z-00-DX1", cols=28, rows=24, seed=3)
    total = _tissue_tiles(big)
    shutil.copy(big, inbox / big.name)
    daemon = Daemon(tmp_path / "data", inbox)
    _mid_job(daemon, big, total)
    started = time.time()
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    assert time.time() - started < 60
    # Requeued, not finished: back in the queue, the interrupted attempt not counted, no slide stored.
    assert _jobs_of(tmp_path / "data") == {big.name: ("queued", 0)}
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    with EagleService(Settings(data_dir=tmp_path / "data")) as service:
        queue = service.status()["queue"]
        assert service.catalog.stats()["patients"] == 0
    assert queue["running"] == 0 and queue["queued"] == 1 and queue["done"] == 0
    assert '"event": "job_requeued"' in Path(daemon.log.name).read_text()


def test_cli_goes_through_the_running_daemon(tmp_path, good_slides):
    inbox, data = tmp_path / "inbox", tmp_path / "data"
    inbox.mkdir()
    daemon = Daemon(data, inbox)
    try:
        shutil.copy(good_slides[0], inbox / good_slides[0].name)
        shutil.copy(good_slides[2], inbox / good_slides[2].name)
        daemon.wait(lambda s: s["queue"]["done"] == 2, "2 done")

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "eagle_index", *args, "--data-dir", str(data)], capture_output=True, text=True, timeout=120)

        status = json.loads(cli("status", "--json").stdout)
        assert status["queue"]["done"] == 2 and status["failures"] == [] and status["owner"]["pid"] == daemon.proc.pid
        hits = json.loads(cli("search", "--patient", "TCGA-AA-0001", "--json").stdout)
        assert [h["patient"] for h in hits] == ["TCGA-AA-0002"]
        assert json.loads(cli("stats", "--json").stdout)["patients"] == 2
        (tmp_path / "clini.csv").write_text("PATIENT,MSI\nTCGA-AA-0001,high\nTCGA-ZZ-9999,low\n")
        labels = cli("labels", "import", str(tmp_path / "clini.csv"), "--json")
        assert json.loads(labels.stdout)["unknown_patients"] == ["TCGA-ZZ-9999"]
        refused = cli("reindex")
        assert refused.returncode != 0 and f"pid {daemon.proc.pid}" in refused.stderr and "Traceback" not in refused.stderr
        shutil.copy(good_slides[3], tmp_path / good_slides[3].name)
        outside = cli("ingest", str(tmp_path / good_slides[3].name), "--models", "tiny")
        assert outside.returncode != 0 and "outside the folders" in outside.stderr
        (inbox / "later").mkdir()
        shutil.copy(good_slides[3], inbox / "later" / good_slides[3].name)
        queued = cli("ingest", str(inbox / "later"), "--models", "tiny", "--json")
        assert queued.returncode == 0, queued.stderr
        daemon.wait(lambda s: s["queue"]["done"] == 3, "3 done")
    finally:
        assert daemon.stop() == 0
