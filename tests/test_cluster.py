"""`eagle-index backfill` on a local Ray cluster, as a user runs it (subprocesses, real Ray, real catalog).

12 generated slides of 5 patients, tiny models on the CPU. Compared against plain `ingest`
into another data folder: patient vectors, artifacts and selections must be bit-identical,
also after a Ray worker is SIGKILLed, after Ctrl-C and after the owner is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest

from slide_fixtures import write_pyramidal_tiff

BOX = 448.0
TIMEOUT = 420
PATIENTS = 5
ENV = {**os.environ, "EAGLE_INDEX_LOG": "INFO", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1"}
TINY = ["--models", "tiny", "--device", "cpu"]

pytestmark = pytest.mark.timeout(900)


def _cli(*args: str, check: bool = True, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "eagle_index", *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, slide table): 12 slides of 5 patients, different sizes and textures."""
    folder = tmp_path_factory.mktemp("archive")
    rows = ["PATIENT,FILENAME"]
    for i in range(12):
        cols = 5 + i % 3
        write_pyramidal_tiff(folder / f"slide-{i:02d}.tiff", mpp=0.5, size_um=(cols * BOX, 5 * BOX),
                             tissue_boxes_um=[(BOX, BOX, (cols - 2) * BOX, 3 * BOX)], seed=i,
                             texture="fat" if i % 2 else "cells")
        rows.append(f"PAT-{i % PATIENTS:02d},slide-{i:02d}.tiff")
    table = tmp_path_factory.mktemp("tables") / "slides.csv"
    table.write_text("\n".join(rows) + "\n")
    return folder, table


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> dict:
    """Plain single-process `ingest` of the same archive into its own data folder."""
    folder, table = archive
    data = tmp_path_factory.mktemp("reference") / "data"
    _cli("ingest", str(folder), "--slide-table", str(table), *TINY, "--data-dir", str(data))
    return _state(data)


def _state(data: Path) -> dict:
    """Everything stored: vectors of every kind, every artifact dataset, every patient's selection, job states."""
    from sqlalchemy import select

    from eagle_index.config import Settings
    from eagle_index.search import read_tile_selection
    from eagle_index.service import EagleService
    from eagle_index.store.models import Job, Slide

    state = {"vectors": {}, "artifacts": {}, "selections": {}}
    with EagleService(Settings(data_dir=data, models="tiny", device="cpu")) as service:
        catalog = service.catalog
        for vs in catalog.vector_sets():
            ids, matrix = catalog.load_vectors(vs.kind, vs.signature)
            names = catalog.external_ids(ids)
            state["vectors"][vs.kind] = {names[int(i)]: row for i, row in zip(ids, matrix)}
        with catalog.transaction() as session:
            state["slides"] = sorted((s.name, s.status) for s in session.scalars(select(Slide)))
            state["jobs"] = {j.path: {"state": j.state, "attempts": j.attempts, "finished_at": j.finished_at, "id": j.id}
                             for j in session.scalars(select(Job))}
            for patient in state["vectors"].get("eagle", {}):
                pid = catalog.patient_id(session, patient)
                tiles = read_tile_selection(catalog.done_artifacts(session, pid), service.settings.eagle.top_k)
                state["selections"][patient] = (tiles.slide, tiles.x_um, tiles.y_um, tiles.attention)
    for path in sorted((data / "artifacts").rglob("*.h5")):
        with h5py.File(path) as handle:
            datasets = {}
            handle.visititems(lambda name, obj: datasets.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
            state["artifacts"][path.name] = datasets
    return state


def _assert_same_numbers(got: dict, want: dict) -> None:
    assert set(got["vectors"]) == set(want["vectors"]) == {"eagle", "chief", "mean-ctranspath"}
    for kind, vectors in want["vectors"].items():
        assert sorted(got["vectors"][kind]) == sorted(vectors) == [f"PAT-{i:02d}" for i in range(PATIENTS)]
        for patient, vector in vectors.items():
            np.testing.assert_array_equal(got["vectors"][kind][patient], vector, err_msg=f"{kind} {patient}")
    assert sorted(got["artifacts"]) == sorted(want["artifacts"]) and len(want["artifacts"]) == 12
    for name, datasets in want["artifacts"].items():
        assert sorted(got["artifacts"][name]) == sorted(datasets)
        for key, value in datasets.items():
            np.testing.assert_array_equal(got["artifacts"][name][key], value, err_msg=f"{name}:{key}")
    assert sorted(got["selections"]) == sorted(want["selections"])
    for patient, (slides, xs, ys, scores) in want["selections"].items():
        g = got["selections"][patient]
        assert g[0] == slides and 0 < len(slides) <= 25
        for a, b in zip(g[1:], (xs, ys, scores)):
            np.testing.assert_array_equal(a, b)



def log_events(text: str, name: str) -> list[dict]:
    """The JSON events called `name` in a log (one per line, after the logging prefix)."""
    found = []
    for line in text.splitlines():
        start = line.find("{\"event\"")
        if start >= 0:
            try:
                event = json.loads(line[start:])
            except ValueError:
                continue
            if event["event"] == name:
                found.append(event)
    return found

@contextlib.contextmanager
def frozen(pids: list[int], then: int = signal.SIGCONT):
    """Ray workers stopped (SIGSTOP) for the block: none can finish a slide, so a status read
    inside it is still true when the next signal lands. `then` is sent to them afterwards."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, then)
            except ProcessLookupError:
                pass


class Backfill:
    """`eagle-index backfill ... --cluster local` as a subprocess; its API answers `status`."""

    def __init__(self, data: Path, archive: tuple[Path, Path], *extra: str):
        folder, table = archive
        self.data = data
        self.log_path = data.parent / f"backfill-{data.name}-{time.time_ns()}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eagle_index", "backfill", str(folder), "--slide-table", str(table), *TINY,
             "--data-dir", str(data), "--retry-backoff", "0.2", "--max-attempts", "2", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=ENV,
        )

    def text(self) -> str:
        return self.log_path.read_text()

    def url(self) -> str | None:
        try:
            info = json.loads((self.data / "owner.json").read_text())
        except (OSError, ValueError):
            return None
        return info["url"] if info.get("pid") == self.proc.pid else None

    def status(self) -> dict | None:
        url = self.url()
        if url is None:
            return None
        try:
            with urllib.request.urlopen(f"{url}/api/v1/status", timeout=30) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def wait_for(self, predicate, what: str) -> dict:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            assert self.proc.poll() is None, f"backfill exited ({self.proc.returncode}) before {what}:\n{self.text()[-4000:]}"
            status = self.status()
            if status is not None and predicate(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.text()[-4000:]}")

    def finish(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def events(self, name: str) -> list[dict]:
        return log_events(self.text(), name)


def test_ingest_daemon_and_plain_backfill_never_import_ray(archive, tmp_path):
    """Without --cluster nothing imports ray: `ingest`, `backfill` and the daemon run in this interpreter."""
    folder, table = archive
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "slide-00.tiff").write_bytes((folder / "slide-00.tiff").read_bytes())
    script = f"""
import json, os, signal, sys, threading, time, urllib.request
from pathlib import Path
from eagle_index.cli import app

def run(*args):
    try:
        app(args=list(args), prog_name="eagle-index", standalone_mode=False)
    except SystemExit:
        pass

tiny = ["--models", "tiny", "--device", "cpu"]
run("ingest", {str(folder / 'slide-01.tiff')!r}, *tiny, "--data-dir", {str(tmp_path / 'a')!r})
assert (Path({str(tmp_path / 'a')!r}) / "catalog.duckdb").exists()
print("after ingest:", "ray" in sys.modules)
run("backfill", {str(folder / 'slide-02.tiff')!r}, *tiny, "--data-dir", {str(tmp_path / 'b')!r})
print("after backfill:", "ray" in sys.modules)

def stop_when_done():
    data = Path({str(tmp_path / 'c')!r})
    for _ in range(1200):
        try:
            url = json.loads((data / "owner.json").read_text())["url"]
            with urllib.request.urlopen(url + "/api/v1/status", timeout=10) as r:
                if json.loads(r.read())["queue"]["done"] == 1:
                    break
        except Exception:
            pass
        time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=stop_when_done, daemon=True).start()
run("daemon", "--watch", {str(inbox)!r}, "--settle-seconds", "0.5", "--poll-seconds", "0.3", *tiny, "--data-dir", {str(tmp_path / 'c')!r})
print("after daemon:", "ray" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after ingest: False" in done.stdout
    assert "after backfill: False" in done.stdout
    assert "after daemon: False" in done.stdout, done.stdout + done.stderr[-2000:]
    # and they did their work: the backfill and the daemon each stored their slide
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    for name in ("b", "c"):
        with EagleService(Settings(data_dir=tmp_path / name, models="tiny", device="cpu")) as service:
            assert service.status()["queue"]["done"] == 1, name


def test_backfill_on_two_ray_workers_equals_plain_ingest(archive, reference, tmp_path):
    data = tmp_path / "cluster"
    run = Backfill(data, archive, "--cluster", "local", "--workers", "2")
    assert run.finish() == 0, run.text()[-4000:]
    out = run.text()
    assert "backfill: 12 done, 0 skipped (already stored), 0 failed, 0 left of 12 slide(s)" in out
    done = run.events("job_done")
    assert sorted(Path(e["file"]).name for e in done) == [f"slide-{i:02d}.tiff" for i in range(12)]
    assert {e["worker"] for e in done} == {"w0", "w1"}  # both workers embedded slides
    state = _state(data)
    _assert_same_numbers(state, reference)
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in state["jobs"].values())
    assert not (data / "owner.json").exists()
    # the same command again: every slide is already done, nothing is embedded
    again = _cli("backfill", str(archive[0]), "--slide-table", str(archive[1]), *TINY, "--data-dir", str(data),
                 "--cluster", "local", "--workers", "2")
    assert "backfill: 12 done" in again.stdout and "job_done" not in again.stderr


def test_killed_ray_worker_requeues_its_slide_and_a_corrupt_slide_fails_alone(archive, reference, tmp_path):
    folder, table = archive
    # the same archive plus a truncated slide of patient PAT-00
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for slide in folder.glob("*.tiff"):
        os.symlink(slide, mixed / slide.name)
    raw = (folder / "slide-03.tiff").read_bytes()
    (mixed / "broken.tiff").write_bytes(raw[: len(raw) // 3])
    mixed_table = tmp_path / "slides.csv"
    mixed_table.write_text(table.read_text() + "PAT-00,broken.tiff\n")
    data = tmp_path / "data"
    run = Backfill(data, (mixed, mixed_table), "--cluster", "local", "--workers", "2")
    # The corrupt slide sorts first and is claimed (and retried) first. A victim is chosen only once it
    # has failed for good, so the killed worker can only hold good slides, and with slides still queued.
    run.wait_for(lambda s: s["queue"]["failed"] == 1 and s["queue"]["queued"] >= 2
                 and len([w for w in s["workers"] if w["pid"] and w["in_flight_files"]]) == 2,
                 "the corrupt slide failed and two Ray workers embedding")
    # `status --json` (the CLI, through the backfill's API) shows the workers
    shown = json.loads(_cli("status", "--json", "--data-dir", str(data)).stdout)
    assert shown["owner"]["role"] == "backfill"
    assert {w["id"] for w in shown["workers"]} >= {"w0", "w1"}
    for worker in shown["workers"]:
        assert set(worker) >= {"id", "node", "device", "slides_done", "seconds_per_slide", "in_flight_files"}
        assert worker["device"] == "cpu" and worker["node"]
    # Freeze both workers: none can finish a slide now, so the status read after this is not stale
    # when the kill lands (each frozen worker keeps holding the good slide it was given).
    with frozen([w["pid"] for w in run.status()["workers"] if w["pid"]]):
        status = run.wait_for(lambda s: any(w["in_flight_files"] for w in s["workers"]), "a frozen worker holding a slide")
        victim = next(w for w in status["workers"] if w["in_flight_files"])
        assert all(Path(f).name != "broken.tiff" for f in victim["in_flight_files"])
        os.kill(victim["pid"], signal.SIGKILL)
    assert run.finish() == 1, run.text()[-4000:]  # 1: the corrupt slide failed
    out = run.text()
    died = run.events("worker_died")
    assert [d["worker"] for d in died] == [victim["id"]]
    requeued = [e for e in run.events("job_requeued") if "died" in e.get("reason", "")]
    assert requeued, out[-4000:]
    done = run.events("job_done")
    good = sorted(Path(e["file"]).name for e in done)
    assert good == [f"slide-{i:02d}.tiff" for i in range(12)]  # each slide embedded and stored exactly once
    assert Path(requeued[0]["file"]).name in good
    assert any(e["worker"] not in (victim["id"],) for e in done if e["file"] == requeued[0]["file"])
    assert "FAILED" in out and "broken.tiff" in out
    state = _state(data)
    # a slide that cannot be read is a failed job, never a slide row or a patient (issue 10)
    assert "broken" not in [name for name, _ in state["slides"]]
    assert [j["state"] for path, j in state["jobs"].items() if Path(path).name == "broken.tiff"] == ["failed"]
    assert sorted(name for name, status in state["slides"] if status == "done") == [f"slide-{i:02d}" for i in range(12)]
    assert {j["state"] for j in state["jobs"].values()} == {"done", "failed"}
    _assert_same_numbers(state, reference)


def test_ctrl_c_then_owner_sigkill_then_resume_embeds_each_slide_once(archive, reference, tmp_path):
    data = tmp_path / "data"
    first = Backfill(data, archive, "--cluster", "local", "--workers", "2")
    busy = first.wait_for(lambda s: s["queue"]["done"] >= 2 and s["queue"]["queued"] >= 1 and all(w["pid"] for w in s["workers"])
                          and any(w["in_flight_files"] for w in s["workers"]), "2 slides done, one in flight")
    # Ctrl-C lands while a slide is certainly in flight: the workers are frozen from this read until after it.
    with frozen([w["pid"] for w in busy["workers"]]):
        first.wait_for(lambda s: any(w["in_flight_files"] for w in s["workers"]), "a frozen worker holding a slide")
        first.proc.send_signal(signal.SIGINT)
    assert first.finish(120) == 130, first.text()[-4000:]
    assert "run the same command again to resume" in first.text()
    after_int = _state(data)
    states = [j["state"] for j in after_int["jobs"].values()]
    assert "running" not in states and states.count("queued") >= 1  # in-flight slides went back to the queue
    assert [e["reason"] for e in first.events("job_requeued")] and not (data / "owner.json").exists()

    second = Backfill(data, archive, "--cluster", "local", "--workers", "2")
    already = states.count("done")
    busy = second.wait_for(lambda s: s["queue"]["done"] >= already + 2 and s["queue"]["queued"] >= 1
                           and all(w["pid"] for w in s["workers"]) and any(w["in_flight_files"] for w in s["workers"]),
                           "2 more slides done, one in flight")
    # Freeze the Ray workers so no in-flight slide can finish between this read and the owner's death:
    # the killed owner then certainly leaves a `running` job behind.
    with frozen([w["pid"] for w in busy["workers"]], then=signal.SIGKILL):  # the dead owner's workers go too
        second.wait_for(lambda s: any(w["in_flight_files"] for w in s["workers"]), "a frozen worker holding a slide")
        second.proc.send_signal(signal.SIGKILL)
        second.finish(60)
    after_kill = _state(data)
    assert "running" in {j["state"] for j in after_kill["jobs"].values()}  # the dead owner left jobs running

    third = Backfill(data, archive, "--cluster", "local", "--workers", "2")
    assert third.finish() == 0, third.text()[-4000:]
    final = _state(data)
    assert {j["state"] for j in final["jobs"].values()} == {"done"}
    # no finished slide was embedded again: its job is untouched, and no run stored it twice
    for path, job in after_kill["jobs"].items():
        if job["state"] == "done":
            assert final["jobs"][path] == job
    stored = [Path(e["file"]).name for run in (first, second, third) for e in run.events("job_done")]
    done_before_kill = {Path(p).name for p, j in after_kill["jobs"].items() if j["state"] == "done"}
    third_stored = {Path(e["file"]).name for e in third.events("job_done")}
    assert not third_stored & done_before_kill
    # (the killed owner may have committed a slide without getting to log it: it is done before the kill)
    assert sorted(set(stored) | done_before_kill) == [f"slide-{i:02d}.tiff" for i in range(12)]
    assert len(stored) == len(set(stored))  # `job_done` is logged after the commit: no slide was stored twice
    _assert_same_numbers(final, reference)


def test_backfill_progress_bar_on_a_terminal(archive, tmp_path):
    """On a TTY stderr: done/total, slides per hour and ETA (no --cluster: embedded in process)."""
    import pty

    folder, table = archive
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "backfill", str(folder / "slide-00.tiff"),
                             str(folder / "slide-05.tiff"), "--slide-table", str(table), *TINY,
                             "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=slave, env={**ENV, "COLUMNS": "160"})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    out, _ = proc.communicate(timeout=TIMEOUT)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen[-3000:]
    assert "backfill" in screen and "2/2" in screen and "slides/h" in screen and "ETA" in screen, screen[-2000:]
    assert "backfill: 2 done" in out.decode()


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers, --gpus-per-worker, --threads-per-worker and --slides-in-flight need --cluster"),
    (["--cluster", "somewhere"], "--cluster 'somewhere': expected local, auto, ray://HOST:PORT or HOST:PORT"),
])
def test_backfill_option_errors_are_one_line(archive, tmp_path, args, message):
    done = _cli("backfill", str(archive[0]), "--slide-table", str(archive[1]), *TINY, "--data-dir", str(tmp_path / "d"),
                *args, check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in done.stderr


def test_backfill_asking_for_gpus_on_a_cpu_cluster_fails_in_one_line(archive, tmp_path):
    done = _cli("backfill", str(archive[0] / "slide-00.tiff"), "--slide-table", str(archive[1]), *TINY,
                "--data-dir", str(tmp_path / "d"), "--cluster", "local", "--gpus-per-worker", "1", check=False)
    assert done.returncode == 1
    assert "error: --gpus-per-worker 1: the Ray cluster 'local' has no GPUs (use --gpus-per-worker 0)" in done.stderr
    assert "Traceback" not in done.stderr
    assert "backfill: 0 done" in done.stdout  # nothing embedded, the job is still queued for the next run


def test_daemon_with_cluster_embeds_watched_slides_on_ray_workers(archive, reference, tmp_path):
    from test_daemon import Daemon

    folder, _ = archive
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    daemon = Daemon(tmp_path / "data", inbox, "--cluster", "local", "--workers", "1")
    for name in ("slide-00.tiff", "slide-05.tiff"):  # patient PAT-00 in the reference, named by file here
        (inbox / name).write_bytes((folder / name).read_bytes())
    # the worker's count follows the job's `done` commit by a moment: wait for both
    status = daemon.wait(lambda s: s["queue"]["done"] == 2 and s["queue"]["queued"] == 0 and s["queue"]["running"] == 0
                         and sum(w["slides_done"] for w in s.get("workers") or []) == 2,
                         "2 slides done on the Ray worker")
    assert [(w["id"], w["device"], w["slides_done"]) for w in status["workers"]] == [("w0", "cpu", 2)]
    assert daemon.stop(signal.SIGTERM) == 0
    log = Path(daemon.log.name).read_text()
    assert '"worker": "w0"' in log and "job_done" in log
    state = _state(tmp_path / "data")
    assert len(state["artifacts"]) == 2  # and they equal the single-process ones (same content, same name)
    for name, datasets in state["artifacts"].items():
        for key, value in datasets.items():
            np.testing.assert_array_equal(value, reference["artifacts"][name][key])
