"""`eagle-index backfill` on a 2-node Ray cluster (two `ray start` processes on this machine).

Issue 19 item 6: many nodes, exercised. A head node and a worker node, 1 CPU each, are started
with the venv's `ray` (`--block`, each in its own session, a private --temp-dir, a random auth
token); the backfill joins them by their GCS address (`--cluster HOST:PORT`) with 2 workers, which
can only be placed one per node (each asks for 1 CPU). The stored vectors, artifacts and
selections must be bit-identical to a plain `ingest` of the same archive, and the two workers
must have run on the two Ray nodes (told apart by Ray node id: both nodes have this host's name).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from slide_fixtures import write_pyramidal_tiff
from test_cluster import _state, log_events

BOX = 448.0
SLIDES = 4
PATIENTS = 2
TINY = ["--models", "tiny", "--device", "cpu"]
RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT = 90  # one `ray start`
RUN_TIMEOUT = 300  # the backfill, the ingest

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TwoNodeCluster:
    """A head and a worker node on this machine; `stop` ends every process of theirs, and only those."""

    def __init__(self):
        # short: Ray's unix sockets live under it (108 bytes at most)
        self.temp_dir = tempfile.mkdtemp(prefix="eray-", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray 2.60 turns token auth on for `ray start --head` when ~/.ray/auth_token exists, and its
        # clients then need the token: give the cluster and its clients a private one.
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start(self, name: str, *args: str) -> None:
        log_path = Path(self.temp_dir) / f"{name}.log"
        self.logs.append(log_path)
        with open(log_path, "w") as log:
            # Ray maps 127.0.0.1 to this host's address; --block keeps `ray start` in the foreground,
            # in a session of its own that its Ray processes share (so they can be ended by group).
            proc = subprocess.Popen([str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                                     "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats",
                                     "--dashboard-agent-listen-port", str(_free_port()), *args],
                                    stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        deadline = time.time() + START_TIMEOUT
        while "Ray runtime started" not in log_path.read_text():
            assert proc.poll() is None, f"ray start ({name}) exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.time() < deadline, f"ray start ({name}) not up in {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.3)

    def start(self) -> None:
        self._start("head", "--head", f"--port={self.port}", "--temp-dir", self.temp_dir, "--include-dashboard=false",
                    "--resources", json.dumps({"node_a": 1}))
        self._start("worker", f"--address={self.address}", "--resources", json.dumps({"node_b": 1}))

    def nodes(self) -> dict[str, str]:
        """Ray node id -> "node_a" | "node_b", of the live nodes, as a client of the cluster sees them."""
        script = ("import json, ray\nray.init(address=%r, log_to_driver=False)\n"
                  "print(json.dumps({n['NodeID']: sorted(r for r in n['Resources'] if r.startswith('node_')) "
                  "for n in ray.nodes() if n['Alive']}))" % self.address)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=self.env, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return {node: names[0] for node, names in json.loads(done.stdout.strip().splitlines()[-1]).items()}

    def text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.logs if p.exists())

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the worker node first, then the head
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `ray start --block` ends its Ray processes
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of its session (its pid is the group's id)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        # anything else of this cluster (its command line names the private temp dir)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if self.temp_dir.encode() in (entry / "cmdline").read_bytes():
                        os.kill(int(entry.name), signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if self.temp_dir.encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, slide table): 4 slides of 2 patients, different sizes and textures."""
    folder = tmp_path_factory.mktemp("archive")
    rows = ["PATIENT,FILENAME"]
    for i in range(SLIDES):
        cols = 5 + i % 3
        write_pyramidal_tiff(folder / f"slide-{i:02d}.tiff", mpp=0.5, size_um=(cols * BOX, 5 * BOX),
                             tissue_boxes_um=[(BOX, BOX, (cols - 2) * BOX, 3 * BOX)], seed=i,
                             texture="fat" if i % 2 else "cells")
        rows.append(f"PAT-{i % PATIENTS:02d},slide-{i:02d}.tiff")
    table = tmp_path_factory.mktemp("tables") / "slides.csv"
    table.write_text("\n".join(rows) + "\n")
    return folder, table


def _cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eagle_index", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "EAGLE_INDEX_LOG": "INFO"})


def _hold_first_ready_worker(proc: subprocess.Popen, data: Path) -> list[str]:
    """Until both Ray workers are ready, freeze the first one (SIGSTOP; it keeps its one slide in flight).

    Actors start at different speeds; the first one ready would otherwise embed every slide before
    the other one is up. Returns what was done, for the failure message."""
    frozen, seen = None, []
    deadline = time.time() + RUN_TIMEOUT
    try:
        while proc.poll() is None and time.time() < deadline:
            try:
                url = json.loads((data / "owner.json").read_text())["url"]
                with urllib.request.urlopen(f"{url}/api/v1/status", timeout=10) as response:
                    workers = json.loads(response.read()).get("workers") or []
            except (OSError, ValueError, KeyError):
                workers = []
            ready = [w for w in workers if w["state"] == "ready" and w["pid"]]
            if len(ready) >= 2:
                seen.append(f"both ready: {[(w['id'], w['slides_done']) for w in ready]}")
                break
            if len(ready) == 1 and frozen is None:
                frozen = ready[0]["pid"]
                os.kill(frozen, signal.SIGSTOP)
                seen.append(f"froze {ready[0]['id']} (pid {frozen}) after {ready[0]['slides_done']} slide(s)")
            time.sleep(0.1)
    finally:
        if frozen is not None:
            try:
                os.kill(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
    return seen


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def _events(text: str, name: str) -> list[dict]:
    return log_events(text, name)


def _assert_same_numbers(got: dict, want: dict) -> None:
    patients = [f"PAT-{i:02d}" for i in range(PATIENTS)]
    assert set(got["vectors"]) == set(want["vectors"]) == {"eagle", "chief", "mean-ctranspath"}
    for kind, vectors in want["vectors"].items():
        assert sorted(got["vectors"][kind]) == sorted(vectors) == patients
        for patient, vector in vectors.items():
            np.testing.assert_array_equal(got["vectors"][kind][patient], vector, err_msg=f"{kind} {patient}")
    assert sorted(got["artifacts"]) == sorted(want["artifacts"]) and len(want["artifacts"]) == SLIDES
    for name, datasets in want["artifacts"].items():
        assert sorted(got["artifacts"][name]) == sorted(datasets)
        for key, value in datasets.items():
            np.testing.assert_array_equal(got["artifacts"][name][key], value, err_msg=f"{name}:{key}")
    assert sorted(got["selections"]) == sorted(want["selections"]) == patients
    for patient, (slides, xs, ys, scores) in want["selections"].items():
        g = got["selections"][patient]
        assert g[0] == slides and 0 < len(slides) <= 25
        for a, b in zip(g[1:], (xs, ys, scores)):
            np.testing.assert_array_equal(a, b, err_msg=f"selection {patient}")


def test_backfill_on_a_two_node_ray_cluster_equals_plain_ingest(archive, tmp_path):
    folder, table = archive
    cluster = TwoNodeCluster()
    # the reference numbers: plain single-process ingest (no Ray), run while the cluster starts
    plain = _cli("ingest", str(folder), "--slide-table", str(table), *TINY, "--data-dir", str(tmp_path / "plain"),
                 env=cluster.env)
    runs = [plain]
    try:
        cluster.start()
        nodes = cluster.nodes()
        assert sorted(nodes.values()) == ["node_a", "node_b"], cluster.text()
        code, _, err = _finish(plain)
        assert code == 0, err[-3000:]
        backfill = _cli("backfill", str(folder), "--slide-table", str(table), *TINY, "--data-dir", str(tmp_path / "cluster"),
                        "--cluster", cluster.address, "--workers", "2", env=cluster.env)
        runs.append(backfill)
        held = _hold_first_ready_worker(backfill, tmp_path / "cluster")
        code, out, err = _finish(backfill)
        assert code == 0, err[-4000:] + cluster.text()
    finally:
        for proc in runs:  # only left running when an assertion above failed
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        cluster.stop()
    assert not cluster.leftovers()
    out += err
    assert f"backfill: {SLIDES} done, 0 skipped (already stored), 0 failed, 0 left of {SLIDES} slide(s)" in out
    started = _events(out, "cluster_start")
    assert [(e["address"], e["workers"], e["cluster_cpus"]) for e in started] == [(cluster.address, 2, 2.0)]
    # the two workers came up on the two nodes (same host name, different Ray nodes)
    ready = {e["worker"]: e["node_id"] for e in _events(out, "worker_ready")}
    assert sorted(ready) == ["w0", "w1"], out[-4000:]
    assert sorted(nodes[node] for node in ready.values()) == ["node_a", "node_b"], (ready, nodes)
    # both embedded slides, each slide once, and each job_done names the node its worker is on
    done = _events(out, "job_done")
    assert sorted(Path(e["file"]).name for e in done) == [f"slide-{i:02d}.tiff" for i in range(SLIDES)]
    assert all(e["node_id"] == ready[e["worker"]] for e in done)
    assert {nodes[e["node_id"]] for e in done} == {"node_a", "node_b"}, (held, done)
    state, reference = _state(tmp_path / "cluster"), _state(tmp_path / "plain")
    _assert_same_numbers(state, reference)
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in state["jobs"].values())
