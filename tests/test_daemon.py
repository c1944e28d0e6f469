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
             "--settle-seconds", "1.5", "--poll-seconds", "0.3", "--retry-backoff", "0.2", "--max-attempts", "2",
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


def _slow_copy(src: Path, dst: Path, seconds: float = 4.0, chunks: int = 8) -> None:
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with open(dst, "wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start:start + step])
            handle.flush()
            time.sleep(seconds / chunks)


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
    from eagle_index.store.models import Slide

    catalog = Catalog.open(data / "catalog.duckdb")
    with catalog.transaction() as session:
        rows = session.execute(select(Slide.name, Slide.status)).all()
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


def test_sigkill_mid_job_then_restart_equals_uninterrupted_run(tmp_path, good_slides):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    big = _slide(tmp_path, "TCGA-BB-0001-01Z-00-DX1", cols=28, rows=24, seed=7)  # several seconds of work
    for slide in [big, *good_slides[:2]]:
        shutil.copy(slide, inbox / slide.name)
    daemon = Daemon(tmp_path / "killed", inbox)
    daemon.wait(lambda s: any((r.get("progress") or {}).get("tiles", 0) > 0 for r in s["running"]), "a job in progress")
    daemon.stop(signal.SIGKILL)
    restarted = Daemon(tmp_path / "killed", inbox)
    restarted.wait(lambda s: s["queue"]["done"] == 3 and s["queue"]["queued"] == 0 and s["queue"]["running"] == 0, "3 done")
    assert restarted.stop() == 0
    reference = Daemon(tmp_path / "clean", inbox)
    reference.wait(lambda s: s["queue"]["done"] == 3 and s["queue"]["queued"] == 0 and s["queue"]["running"] == 0, "3 done")
    assert reference.stop() == 0
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
    shutil.copy(big, inbox / big.name)
    daemon = Daemon(tmp_path / "data", inbox)
    daemon.wait(lambda s: any((r.get("progress") or {}).get("tiles", 0) > 0 for r in s["running"]), "a job in progress")
    started = time.time()
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    assert time.time() - started < 60
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    with EagleService(Settings(data_dir=tmp_path / "data")) as service:
        queue = service.status()["queue"]
    assert queue["running"] == 0 and queue["queued"] + queue["done"] == 1


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
