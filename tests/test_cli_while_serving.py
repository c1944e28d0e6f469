"""Read commands (and the long writes that the server runs for them) work while a daemon holds the
catalog: the CLI goes through `RemoteService`, with the same output as without a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import clustered_vectors, run_cli

N, DIM = 40, 16
NAMES = [f"P{i:03d}" for i in range(N)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    data = tmp_path_factory.mktemp("served") / "data"
    vectors = clustered_vectors(N, DIM, seed=3, clusters=2)
    with EagleService(Settings(data_dir=data)) as service:
        catalog = service.catalog

        def write(session):
            ids = [catalog.patient_id(session, n, create=True) for n in NAMES]
            catalog.put_vectors(session, "eagle", "sig", ids, vectors, source="test")
            for i, pid in enumerate(ids):
                catalog.put_label(session, pid, "organ", "lung" if i % 2 else "colon", "test")

        catalog.write(write)
        service.vectors.sync_all()
    return data


def _offline_outputs(data) -> dict:
    return {
        "search": run_cli("search", "--patient", "P001", "-k", "5", "--label", "organ=lung", "--vote", "organ", "--json",
                          "--data-dir", data).stdout,
        "eval": run_cli("eval", "retrieval", "--label", "organ", "-k", "1,3", "--json", "--data-dir", data).stdout,
    }


def test_read_commands_through_a_running_daemon(data, tmp_path):
    offline = _offline_outputs(data)
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "daemon", "--models", "tiny", "--device", "cpu", "--data-dir", str(data)], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "EAGLE_INDEX_LOG": "WARNING"})
    try:
        deadline = time.time() + 120
        while not (data / "owner.json").exists() or "url" not in (data / "owner.json").read_text():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.2)
        # the same answers as without the server
        assert _offline_outputs(data) == offline
        # cohorts and probes: writes run on the server, reads come back with the same shapes
        made = json.loads(run_cli("cohort", "create", "lungs", "--label", "organ=lung", "--json", "--data-dir", data).stdout)
        assert made["member_count"] == N // 2
        shown = json.loads(run_cli("cohort", "show", "lungs", "--json", "--data-dir", data).stdout)
        assert sorted(m["patient"] for m in shown["members"]) == NAMES[1::2]
        out = tmp_path / "lungs.csv"
        run_cli("cohort", "export", "lungs", "--format", "clinical", "--out", out, "--data-dir", data)
        assert len(out.read_text().splitlines()) == N // 2 + 1
        trained = json.loads(run_cli("probe", "train", "organ", "--folds", "3", "--json", "--data-dir", data).stdout)
        assert trained["status"] == "done" and trained["kind"] == "eagle"
        assert [p["name"] for p in json.loads(run_cli("probe", "list", "--json", "--data-dir", data).stdout)] == [trained["name"]]
        # what needs the catalog itself is refused with one line naming the server, never a traceback
        refused = run_cli("reindex", "--data-dir", data, check=False)
        assert refused.returncode != 0 and "daemon" in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    assert not (data / "owner.json").exists()
    np.testing.assert_equal(json.loads(run_cli("stats", "--json", "--data-dir", data).stdout)["patients"], N)


@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory):
    """An archive with eagle and chief vectors and a label: what `probe compare` needs."""
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    data = tmp_path_factory.mktemp("served2") / "data"
    with EagleService(Settings(data_dir=data)) as service:
        catalog = service.catalog

        def write(session):
            ids = [catalog.patient_id(session, n, create=True) for n in NAMES]
            catalog.put_vectors(session, "eagle", "sig", ids, clustered_vectors(N, DIM, seed=3, clusters=2), source="test")
            catalog.put_vectors(session, "chief", "sigc", ids, clustered_vectors(N, DIM, seed=4, clusters=2), source="test")
            for i, pid in enumerate(ids):
                catalog.put_label(session, pid, "organ", "lung" if i % 2 else "colon", "test")

        catalog.write(write)
        service.vectors.sync_all()
    return data


def _ui_commands(data) -> dict:
    """The CLI twins of what the UI does through a running server: few-shot, compare, cohort map, schema revision."""
    return {
        "fewshot": json.loads(run_cli("probe", "fewshot", "organ", "--ks", "1,2", "--draws", "2", "--json", "--data-dir", data).stdout),
        "compare": json.loads(run_cli("probe", "compare", "organ", "--folds", "3", "--json", "--data-dir", data).stdout),
        "umap": json.loads(run_cli("cohort", "umap", "everyone", "--json", "--data-dir", data).stdout),
        "db": run_cli("db", "current", "--data-dir", data).stdout,
    }


def test_ui_twins_through_a_running_server(two_kinds, tmp_path):
    data = two_kinds
    run_cli("cohort", "create", "everyone", "--data-dir", data)
    offline = _ui_commands(data)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "serve", "--port", "0", "--models", "tiny", "--device", "cpu",
                             "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EAGLE_INDEX_LOG": "WARNING"})
    try:
        deadline = time.time() + 120
        while not (data / "owner.json").exists() or "url" not in (data / "owner.json").read_text():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        served = _ui_commands(data)
        assert served["db"] == offline["db"] and offline["db"].startswith("current: ")
        for key in ("curve", "counts", "positive", "kind"):
            assert served["fewshot"][key] == offline["fewshot"][key]
        assert served["compare"]["results"] == offline["compare"]["results"]
        assert served["compare"]["a"] == offline["compare"]["a"] and served["compare"]["b"]["kind"] == "chief"
        assert {p["patient"]: (p["x"], p["y"]) for p in served["umap"]["points"]} == \
            {p["patient"]: (p["x"], p["y"]) for p in offline["umap"]["points"]}
        text = run_cli("cohort", "umap", "everyone", "--data-dir", data).stdout  # the text form names no server path
        assert "map of 40 patients" in text
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
