"""What a newcomer still trips over (issue 21): the README's commands on the demo archive, run as
the user runs them (the real CLI in a subprocess), each case failing before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=None, timeout=300, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAGLE_INDEX_") or k == "EAGLE_INDEX_CACHE"}
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "eagle_index", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`eagle-index demo --no-serve` (tiny models, labels TISSUE and SITE), as the README makes it."""
    root = tmp_path_factory.mktemp("newcomer")
    data = root / "demo-data"
    result = run("demo", "--patients", "3", "--no-serve", "--data-dir", data, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return data


# -- 1. queries that encode use the preset the archive's vectors were made with ---------------------
def test_queries_that_encode_use_the_archives_preset_without_models(demo, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = np.full((1024, 1024, 3), (222, 150, 196), np.uint8)
    dots = rng.integers(0, 1024, size=(4000, 2))
    for y, x in dots:
        pixels[max(0, y - 3):y + 3, max(0, x - 3):x + 3] = (70, 40, 120)
    Image.fromarray(pixels).save(tmp_path / "region.png")
    d = ["--data-dir", demo]
    for args in (["search-tiles", "--slide", "DEMO-001-S1", "--box", "0,0,1344,896", *d],
                 ["search-tiles", "--image", tmp_path / "region.png", "--mpp", "0.5", "--json", *d],
                 ["search", "--slide", demo / "demo-slides" / "DEMO-002-S1.tiff", "--patient", "DEMO-002", *d]):
        result = run(*args)
        assert result.returncode == 0 and "weights" not in result.stderr, (args, result.stderr[-600:])
        assert "DEMO-00" in result.stdout, (args, result.stdout)
    # the preset the user names still wins: real weights are missing here, said in the usual way
    result = run("search-tiles", "--slide", "DEMO-001-S1", "--box", "0,0,1344,896", "--models", "real",
                 "--weights-dir", tmp_path, *d)
    assert result.returncode == 5 and "weights not found" in result.stderr


# -- 2. label names match in any case; an unknown one is an error; skipped rows are said ---------------
def test_label_names_match_in_any_case_and_unknown_ones_are_errors(demo, tmp_path):
    d = ["--data-dir", demo]
    hits = json.loads(run("search", "--patient", "DEMO-001", "--label", "tissue=pale", "--json", *d).stdout)
    assert [h["patient"] for h in hits] == ["DEMO-002"]  # stored as TISSUE
    line = one_error_line(run("search", "--patient", "DEMO-001", "--label", "NOSUCH=x", *d))
    assert "NOSUCH" in line and "SITE, TISSUE" in line
    line = one_error_line(run("search-tiles", "--patient", "DEMO-001", "--tile", "1", "--label", "NOSUCH=x", *d))
    assert "NOSUCH" in line and "TISSUE" in line
    vote = json.loads(run("search", "--patient", "DEMO-001", "--vote", "Tissue", "--json", *d).stdout)["vote"]
    assert vote["unlabelled"] == 0 and sum(vote["counts"].values()) == 2
    created = run("cohort", "create", "pale-ones", "--label", "tissue=pale", *d)
    assert created.returncode == 0, created.stderr
    shown = run("cohort", "show", "pale-ones", "--json", *d)
    assert [m["patient"] for m in json.loads(shown.stdout)["members"]] == ["DEMO-002"]
    # a label imported in another spelling joins the stored one (one name, not two)
    (tmp_path / "more.csv").write_text("PATIENT,tissue\nDEMO-003,fatty\nNOPE-9,dense\n")
    imported = run("labels", "import", tmp_path / "more.csv", *d)
    assert imported.returncode == 0, imported.stderr
    assert "1 row(s) skipped" in imported.stdout and "NOPE-9" in imported.stdout
    stats = json.loads(run("stats", "--json", *d).stdout)
    assert stats["labels"] == 6, stats  # DEMO-003's TISSUE replaced, no `tissue` beside it


# -- 3. an empty folder is not a successful ingest ------------------------------------------------------
def test_ingest_of_a_folder_without_slides_fails_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no slides here\n")
    line = one_error_line(run("ingest", tmp_path / "empty", "--models", "tiny", "--device", "cpu",
                              "--data-dir", tmp_path / "data"))
    assert line == f"error: no slides found in {tmp_path / 'empty'}"
    assert not (tmp_path / "data").exists()  # no empty archive left behind


# -- 4. --kind does not invent vector kinds ---------------------------------------------------------------
def test_import_with_an_unknown_kind_is_refused(demo, tmp_path):
    from conftest import clustered_vectors, write_eagle_h5

    write_eagle_h5(tmp_path / "v.h5", ["X1", "X2"], clustered_vectors(2, 64))
    data = tmp_path / "data"
    line = one_error_line(run("import-embeddings", tmp_path / "v.h5", "--kind", "foo", "--data-dir", data))
    assert "unknown vector kind 'foo'" in line and "eagle" in line
    # a file `embed` wrote records its kind: another --kind would store eagle-signed vectors under it
    run("embed", demo / "demo-slides" / "DEMO-003-S1.tiff", "--out", tmp_path / "e.h5", "--models", "tiny", "--device", "cpu")
    line = one_error_line(run("import-embeddings", tmp_path / "e.h5", "--kind", "chief", "--data-dir", data))
    assert "'eagle' vectors" in line
    ok = run("import-embeddings", tmp_path / "v.h5", tmp_path / "e.h5", "--data-dir", data)
    assert ok.returncode == 0, ok.stderr
    kinds = {s["kind"] for s in json.loads(run("stats", "--json", "--data-dir", data).stdout)["vector_sets"]}
    assert kinds == {"eagle"}


# -- 9. no Python internals in the output ------------------------------------------------------------------
def test_status_and_duplicates_print_words_not_python_values(demo, tmp_path):
    import shutil

    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    data = tmp_path / "data"
    shutil.copytree(demo, data, ignore=shutil.ignore_patterns("owner.*"))
    run("db", "upgrade", "--data-dir", tmp_path / "fresh")  # nothing embedded yet: no mean time per slide
    fresh = run("status", "--data-dir", tmp_path / "fresh")
    assert fresh.returncode == 0 and "None" not in fresh.stdout, fresh.stdout
    assert "throughput: 0 slides in the last hour\n" in fresh.stdout
    with EagleService(Settings(data_dir=data)) as service:  # a slide being embedded, as a worker records it
        service.jobs.enqueue("sha256:" + "ab" * 32, str(data / "x.tiff"), "DEMO-009")
        job = service.jobs.claim()
        service.jobs.heartbeat(job.id, {"tiles": 120, "stage": "ctranspath"})
    out = run("status", "--data-dir", data).stdout
    assert "running: " in out and "ctranspath, 120 tiles" in out and "{" not in out and "None" not in out, out
    # Ray workers that have not reported yet (backfill --cluster): no 'on None (None)'
    from eagle_index.cli.ops_cmds import status_lines

    lines = status_lines({"owner": None, "queue": {"running": 1}, "running": [], "index": [], "failures": [],
                          "throughput": {"slides_last_hour": 0, "mean_seconds_per_slide": None},
                          "workers": [{"id": "w0", "node": None, "device": None, "slides_done": 0, "seconds_per_slide": None}]})
    assert "worker: w0: 0 slides" in lines and not any("None" in line for line in lines), lines
    dup = run("cohort", "duplicates", "--threshold", "0.5", "--data-dir", data)
    assert dup.returncode == 0 and "None" not in dup.stdout and "eagle vectors)" in dup.stdout, dup.stdout


# -- 10. parsing: tables, files that are not slides, Ctrl-C ----------------------------------------------
def test_tables_and_unreadable_files_are_described_in_words(demo, tmp_path):
    slide = demo / "demo-slides" / "DEMO-002-S1.tiff"
    (tmp_path / "only.csv").write_text("FILENAME\nDEMO-002-S1.tiff\n")
    line = one_error_line(run("ingest", slide, "--slide-table", tmp_path / "only.csv", "--models", "tiny",
                              "--data-dir", tmp_path / "data"))
    assert line.endswith("missing column(s) PATIENT (found: FILENAME)"), line
    (tmp_path / "semi.csv").write_text("PATIENT;Stage\nDEMO-002;II\n")  # other delimiters still work
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("owner.*"))
    imported = run("labels", "import", tmp_path / "semi.csv", "--data-dir", copy)
    assert imported.returncode == 0 and "1 labels" in imported.stdout, imported.stdout + imported.stderr
    (tmp_path / "scan.svs").write_text("not a slide\n")
    for args in (["tiles", tmp_path / "scan.svs"], ["embed", tmp_path / "scan.svs", "--out", tmp_path / "o.h5", "--models", "tiny"]):
        line = one_error_line(run(*args))
        assert line.endswith("scan.svs: cannot open slide: not a slide or image file OpenSlide/PIL can read"), line


def test_ctrl_c_during_ingest_says_so_and_exits_130(demo, tmp_path):
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("EAGLE_INDEX_") or k == "EAGLE_INDEX_CACHE"}
    env["PYTHONPATH"] = str(REPO)
    args = [sys.executable, "-m", "eagle_index", "ingest", demo / "demo-slides", "--slide-table", demo / "demo-slides" / "slides.csv",
            "--models", "tiny", "--device", "cpu", "--data-dir", tmp_path / "data"]
    # its own process group, as a terminal's Ctrl-C reaches the foreground group; SIGINT not ignored
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # once the catalog exists the command is at work (models, reading, embedding): Ctrl-C then.
        # (Not while it waits on the reader pool: slides/pool.py swallows the interrupt there.)
        deadline = time.monotonic() + 120
        while not (tmp_path / "data" / "catalog.duckdb").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and lines[0].startswith("interrupted: "), (proc.returncode, err)
    assert "run the same command again" in lines[0] and "Traceback" not in err
    again = run(*args[3:])
    assert again.returncode == 0 and ("4 ingested" in again.stdout or "skipped" in again.stdout), again.stdout + again.stderr
