"""Issue 15, ingestion and storage side: a hostile file system and hostile files.

Watcher under two time zones, symlinks out of the watched folders, vectors whose norm
overflows, crash loops past --max-attempts, temp files of killed runs, a writer that pauses
longer than the settle time, string datasets, "NA" labels, lock messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import write_eagle_h5
from slide_fixtures import write_pyramidal_tiff

ROOT = Path(__file__).resolve().parents[1]
BOX = 448.0


def _service(data: Path):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    return EagleService(Settings(data_dir=data, models="tiny", device="cpu"))


def _slide(path: Path, seed: int = 0) -> Path:
    return write_pyramidal_tiff(path, mpp=1.0, size_um=(5 * BOX, 4 * BOX), tissue_boxes_um=[(BOX, BOX, 3 * BOX, 2 * BOX)],
                                seed=seed).path


def _jobs(service) -> list[dict]:
    return sorted(service.jobs.jobs(limit=1000), key=lambda j: j["id"])


# -- 2. re-written slides and the time zone ------------------------------------------------------
TZ_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from eagle_index.config import Settings
    from eagle_index.service import EagleService
    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher

    root = Path(sys.argv[1])
    inbox = root / "inbox"
    inbox.mkdir()
    slide = inbox / "TCGA-AA-0001-01Z-00-DX1.svs"
    slide.write_bytes(b"first version" * 1000)
    with EagleService(Settings(data_dir=root / "data")) as service:
        def scan():
            watcher = Watcher([inbox], service.jobs, PatientResolver(), settle_seconds=0)  # a fresh watcher: a restart
            watcher.scan_once()
            return watcher.scan_once()
        first = scan()
        time.sleep(1.5)
        slide.write_bytes(b"second version, new content" * 1000)  # overwritten in place, mtime now
        second = scan()
        print(len(first), len(second), len(service.jobs.jobs()))
""")


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_overwritten_slide_is_enqueued_again_in_any_time_zone(tmp_path, tz):
    env = {**os.environ, "TZ": tz, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", TZ_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1", "2"], (tz, done.stdout)


# -- 3. symlinks -------------------------------------------------------------------------------------
@pytest.fixture
def linked_inbox(tmp_path):
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "sub").mkdir(parents=True)
    outside.mkdir()
    inside = inbox / "TCGA-AA-0001-01Z-00-DX1.svs"
    inside.write_bytes(b"inside slide" * 100)
    far = outside / "TCGA-AA-0002-01Z-00-DX1.svs"
    far.write_bytes(b"a slide elsewhere" * 100)
    secret = outside / "secret.txt"
    secret.write_text("root:x:0:0")
    (inbox / "passwd.svs").symlink_to(secret)
    (inbox / "TCGA-AA-0003-01Z-00-DX1.svs").symlink_to(far)
    (inbox / "sub" / "TCGA-AA-0004-01Z-00-DX1.svs").symlink_to(inside)  # a link that stays inside: fine
    (inbox / "linked-folder").symlink_to(outside, target_is_directory=True)
    return inbox, outside


def test_watcher_never_follows_a_link_out_of_its_folders(tmp_path, linked_inbox, monkeypatch):
    from eagle_index.ingest import watcher as watcher_module
    from eagle_index.ingest.patients import PatientResolver

    inbox, outside = linked_inbox
    hashed = []
    real = watcher_module.slide_fingerprint
    monkeypatch.setattr(watcher_module, "slide_fingerprint", lambda p: hashed.append(Path(p)) or real(p))
    with _service(tmp_path / "data") as service:
        watcher = watcher_module.Watcher([inbox], service.jobs, PatientResolver(), settle_seconds=0)
        watcher.scan_once()
        enqueued = watcher.scan_once()
        files = sorted(Path(e["file"]).name for e in enqueued)
        assert files == ["TCGA-AA-0001-01Z-00-DX1.svs", "TCGA-AA-0004-01Z-00-DX1.svs"]
        assert all(outside not in p.resolve().parents for p in hashed), hashed
        assert {e["state"] for e in enqueued} == {"queued", "duplicate"}  # the inside link is the same content


def test_job_api_refuses_the_same_links(tmp_path, linked_inbox):
    from web import create_app

    inbox, outside = linked_inbox
    with _service(tmp_path / "data") as service:
        client = create_app(service=service, owner={"role": "serve", "roots": [inbox]}).test_client()
        for name in ("passwd.svs", "TCGA-AA-0003-01Z-00-DX1.svs", "linked-folder"):
            response = client.post("/api/v1/jobs", json={"paths": [str(inbox / name)]})
            assert response.status_code == 400, (name, response.get_json())
        whole = client.post("/api/v1/jobs", json={"paths": [str(inbox)]}).get_json()
        assert sorted(Path(j["file"]).name for j in whole["jobs"]) == ["TCGA-AA-0001-01Z-00-DX1.svs", "TCGA-AA-0001-01Z-00-DX1.svs"]
        assert all(outside not in Path(j["file"]).parents for j in whole["jobs"])


# -- 4. vectors whose norm overflows ------------------------------------------------------------------
def test_vector_norm_is_computed_in_float64(tmp_path):
    from eagle_index.errors import InputError
    from eagle_index.store.validation import as_vector_matrix, l2_normalized

    big = np.full((1, 1280), 1e20, dtype=np.float32)  # finite; the float32 sum of squares is inf
    normalized = l2_normalized(as_vector_matrix(big, 1280, "big.h5"))
    assert np.allclose(normalized, 1 / np.sqrt(1280)) and np.isfinite(normalized).all()
    tiny = np.full((1, 8), 1e-30, dtype=np.float32)  # the float32 sum of squares underflows to 0
    assert np.allclose(l2_normalized(as_vector_matrix(tiny, 8, "tiny.h5")), 1 / np.sqrt(8))
    with pytest.raises(InputError, match=r"huge.h5: row 0 .*float32"):
        as_vector_matrix(np.full((1, 8), 1e300), 8, "huge.h5")  # finite in float64, inf once stored as float32
    with pytest.raises(InputError, match="row 1 has zero norm"):
        as_vector_matrix(np.asarray([[1.0, 0], [0.0, 0.0]]), 2, "zero.h5")
    with pytest.raises(InputError, match="row 0 has zero norm"):
        as_vector_matrix(np.full((1, 4), 1e-46, dtype=np.float64), 4, "subnormal.h5")  # 0 once stored as float32


def test_imported_overflowing_vector_is_searchable_and_never_a_zero_hit(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 1280)).astype(np.float32)
    vectors[3] = 1e20
    ids = [f"P-{i:02d}" for i in range(20)]
    path = write_eagle_h5(tmp_path / "cohort.h5", ids, vectors)
    with _service(tmp_path / "data") as service:
        service.import_embeddings([path], kind="eagle")
        hits = service.search_patient("P-03", k=5)
        assert len(hits) == 5 and all(np.isfinite(h.score) for h in hits)
        for query in ("P-00", "P-07"):
            scores = {h.patient: h.score for h in service.search_patient(query, k=19)}
            assert "P-03" in scores and scores["P-03"] != 0.0
            assert abs(scores["P-03"] - float(vectors[int(query[2:])].sum() / np.linalg.norm(vectors[int(query[2:])]) / np.sqrt(1280))) < 1e-4


def test_import_refuses_vectors_that_overflow_float32(tmp_path):
    from eagle_index.errors import InputError

    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("P-1", data=np.full(16, 1e300))
        handle.create_dataset("P-2", data=np.ones(16))
    with _service(tmp_path / "data") as service:
        with pytest.raises(InputError, match="huge.h5"):
            service.import_embeddings([path], kind="eagle")
        assert service.stats()["patients"] == 0


# -- 7. attempts are final -----------------------------------------------------------------------------
def test_a_job_that_killed_its_process_max_attempts_times_is_failed(tmp_path):
    """Each death is on record as the worker's position (issue 24 item 5: only such evidence counts;
    tests/test_crash_cap.py has deaths without it)."""
    from eagle_index.ingest.worker import Position
    from eagle_index.server import recover_after_crash

    slide = tmp_path / "inbox" / "TCGA-AA-0009-01Z-00-DX1.svs"
    slide.parent.mkdir()
    slide.write_bytes(b"crashes the process" * 100)
    with _service(tmp_path / "data") as service:
        state, job_id = service.jobs.enqueue("sha256:crash", str(slide), "TCGA-AA-0009")
        assert state == "queued"
        outcomes = []
        for _ in range(3):
            claimed = service.jobs.claim()  # the process then dies (SIGKILL): the job stays `running`
            assert claimed is not None and claimed.attempts <= 3
            position = Position(tmp_path / "data")  # embedding it alone, at the same point each time
            position.set([claimed], claimed, 0, alone=True)
            position.close()
            outcomes.append(recover_after_crash(service, max_attempts=3))  # what the next owner does at start
        assert [o["requeued"] for o in outcomes] == [1, 1, 0] and [o["failed"] for o in outcomes] == [0, 0, 1]
        assert service.jobs.claim() is None
        job = next(j for j in _jobs(service) if j["id"] == job_id)
        assert job["state"] == "failed" and job["attempts"] == 1  # a death is not an attempt; the evidence failed it
        assert "died 3 times" in job["error"] and "process" in job["error"]
        failures = service.status()["failures"]
        assert failures and failures[0]["file"] == str(slide)


# -- 8. leftovers ------------------------------------------------------------------------------------------
def _atomic_temp_name(target: Path) -> Path:
    """The temp file eagle_index.atomic writes for `target` (caught before its rename)."""
    from unittest import mock

    from eagle_index.atomic import atomic_write_bytes

    names = []

    def replace(src, dst):
        names.append(Path(src))
        raise OSError("stop here")

    with mock.patch("os.replace", replace), pytest.raises(OSError):
        atomic_write_bytes(target, b"x")
    return names[0]


def test_temp_files_of_killed_runs_are_removed_at_owner_start(tmp_path):
    data = tmp_path / "data"
    (data / "index").mkdir(parents=True)
    (data / "artifacts" / "ab").mkdir(parents=True)
    old = time.time() - 3600
    stale = [data / "index" / ".eagle-abc.faiss.k2j3h4g5.tmp", data / "index" / ".eagle-abc.json.q8w7e6r5.tmp",
             data / "artifacts" / "ab" / ".ab12cd.h5.zx9_cv8b.tmp", data / ".owner.json.p0o9i8u7.tmp"]
    # the stale names above are the ones eagle_index.atomic really writes (its temp files, caught before the rename)
    from eagle_index.server import _TEMP_NAME

    written = [_atomic_temp_name(data / "index" / "eagle-abc.faiss"), _atomic_temp_name(data / "owner.json")]
    assert all(_TEMP_NAME.match(p.name) for p in written) and not any(p.exists() for p in written)
    assert [p.name[:-len("k2j3h4g5.tmp")] for p in written] == [".eagle-abc.faiss.", ".owner.json."]
    fresh = [data / "index" / ".eagle-new.faiss.a1b2c3d4.tmp", data / ".owner.json.fresh123.tmp"]  # too recent
    kept = [data / "index" / "notes.tmp", data / "artifacts" / "ab" / "ab12cd.h5", data / "artifacts" / "ab" / ".mine.tmp",
            data / "owner.json.tmp", *fresh]
    for path in stale + kept:
        path.write_bytes(b"x" * 10)
    for path in stale + kept:
        if path not in fresh:
            os.utime(path, (old, old))
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "daemon", "--models", "tiny", "--device", "cpu",
                             "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (data / "owner.json").exists():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            time.sleep(0.2)
        assert (data / "owner.json").exists()
    finally:
        proc.kill()  # the clean-up ran before owner.json was published; a kill is what it must survive anyway
        proc.wait(60)
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert "removed 4 temp file(s)" in (tmp_path / "daemon.log").read_text()


def test_writer_pausing_past_the_settle_time_leaves_no_failed_job(tmp_path):
    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher
    from eagle_index.ingest.worker import Worker
    import threading

    source = _slide(tmp_path / "source.tiff")
    content = source.read_bytes()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    target = inbox / "TCGA-AA-0005-01Z-00-DX1.tiff"
    with _service(tmp_path / "data") as service:
        watcher = Watcher([inbox], service.jobs, PatientResolver(), settle_seconds=0)
        worker = Worker(service.ingest_context(), service.jobs, threading.Event(), max_attempts=1, backoff_seconds=0)
        target.write_bytes(content[: len(content) // 3])  # the copy stalls longer than the settle time
        watcher.scan_once()
        assert len(watcher.scan_once()) == 1
        partial = service.jobs.claim()
        assert worker.process(partial) == "failed"  # a truncated TIFF fails, and with one attempt that is final
        target.write_bytes(content)  # the writer resumes and finishes
        os.utime(target, (time.time() + 2, time.time() + 2))
        watcher.scan_once()
        assert [e["state"] for e in watcher.scan_once()] == ["queued"]
        assert worker.process(service.jobs.claim()) == "done"
        jobs = _jobs(service)
        assert [j["state"] for j in jobs] == ["skipped", "done"], jobs
        assert "superseded" in jobs[0]["error"]
        assert service.status()["failures"] == []
        assert service.stats()["slides"] == 1


def test_a_file_changing_under_a_running_job_is_superseded_not_failed(tmp_path):
    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher
    from eagle_index.ingest.worker import Worker
    import threading

    source = _slide(tmp_path / "source.tiff")
    content = source.read_bytes()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    target = inbox / "TCGA-AA-0006-01Z-00-DX1.tiff"
    with _service(tmp_path / "data") as service:
        watcher = Watcher([inbox], service.jobs, PatientResolver(), settle_seconds=0)
        worker = Worker(service.ingest_context(), service.jobs, threading.Event(), max_attempts=1, backoff_seconds=0)
        target.write_bytes(content[: len(content) // 3])
        watcher.scan_once()
        watcher.scan_once()
        partial = service.jobs.claim()
        target.write_bytes(content)  # finished while the partial copy was being embedded
        assert worker.process(partial) == "skipped"
        assert service.status()["failures"] == []


# -- 9. small inconsistencies ----------------------------------------------------------------------
def test_string_dataset_is_a_clear_error(tmp_path):
    from eagle_index.errors import InputError

    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("P-1", data=np.asarray([b"0.1", b"0.2", b"0.3"]))
        handle.create_dataset("P-2", data=np.ones(3))
    with _service(tmp_path / "data") as service:
        with pytest.raises(InputError, match=r"strings.h5: dataset 'P-1' .*not numbers"):
            service.import_embeddings([path], kind="eagle")
    done = subprocess.run([sys.executable, "-m", "eagle_index", "import-embeddings", str(path), "--data-dir", str(tmp_path / "d2")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0 and "Traceback" not in done.stderr and "strings.h5" in done.stderr


def test_na_and_none_are_values_and_na_is_a_patient(tmp_path):
    from eagle_index.formats.tables import read_clinical_table, read_slide_table

    table = tmp_path / "clinical.csv"
    table.write_text("PATIENT,MSI,grade\nNA,NA,None\nP-2,,null\nNone,high,2\n")
    read = read_clinical_table(table)
    assert read.labels == {"NA": {"MSI": "NA", "grade": "None"}, "P-2": {"grade": "null"}, "None": {"MSI": "high", "grade": "2"}}
    slides = tmp_path / "slides.csv"
    slides.write_text("PATIENT,FILENAME\nNA,a.svs\n")
    assert read_slide_table(slides)[0].patient == "NA"


def test_lock_messages_name_the_holder(tmp_path):
    from eagle_index.errors import CatalogError
    from eagle_index.owner import Ownership

    data = tmp_path / "data"
    with _service(data) as service:
        _ = service.catalog
    # a foreign program (not an eagle-index owner) holds DuckDB's lock on the catalog
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); time.sleep(120)",
                               str(data / "catalog.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(CatalogError) as caught, _service(data) as service:
            _ = service.catalog
        message = str(caught.value)
        assert f"PID {holder.pid}" in message and "not an eagle-index" in message and "eagle-index process" not in message
    finally:
        holder.kill()
        holder.wait()
    # an owner that holds the lock but has not written owner.json yet
    held = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, sys, time
        handle = open(sys.argv[1], "a+"); fcntl.flock(handle, fcntl.LOCK_EX); print("ok", flush=True); time.sleep(120)
        """), str(data / "owner.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "ok"
        with pytest.raises(CatalogError) as caught:
            Ownership(data, "serve").acquire()
        message = str(caught.value)
        assert "pid -1" not in message and "cannot start serve" in message and str(data) in message
    finally:
        held.kill()
        held.wait()


# -- read-ahead in the daemon's worker (issue 19) --------------------------------------------------
def _three_queued(tmp_path, service) -> list[Path]:
    from eagle_index.fingerprint import slide_fingerprint

    paths = [_slide(tmp_path / f"TCGA-AA-00{20 + i}-01Z-00-DX1.tiff", seed=i) for i in range(3)]
    for path in paths:
        service.jobs.enqueue(slide_fingerprint(path), str(path), path.stem[:12], None)
    return paths


def test_the_worker_claims_the_next_slides_while_one_is_embedded_and_stores_each_once(tmp_path):
    from eagle_index.ingest.worker import Worker
    import threading

    with _service(tmp_path / "data") as service:
        _three_queued(tmp_path, service)
        claim, done_at_claim = service.jobs.claim, []

        def claim_and_count(**options):  # suspects=False on read-ahead claims (issue 24 item 5)
            done_at_claim.append(service.status()["queue"]["done"])
            return claim(**options)

        service.jobs.claim = claim_and_count
        worker = Worker(service.ingest_context(), service.jobs, threading.Event(), max_attempts=1, backoff_seconds=0)
        assert worker.process(service.jobs.claim(), read_ahead=True) == "done"
        # the 2nd and 3rd slides were claimed (and read) before the 1st was stored
        assert done_at_claim[:3] == [0, 0, 0], done_at_claim
        jobs = _jobs(service)
        assert [(j["state"], j["attempts"]) for j in jobs] == [("done", 1)] * 3, jobs
        assert service.stats()["slides"] == 3


def test_stopping_the_worker_gives_every_claimed_slide_back_untouched(tmp_path):
    from eagle_index.ingest.worker import Worker
    import threading

    with _service(tmp_path / "data") as service:
        _three_queued(tmp_path, service)
        stop, claim = threading.Event(), service.jobs.claim
        claims = []

        def claim_then_stop(**options):  # suspects=False on read-ahead claims (issue 24 item 5)
            job = claim(**options)
            claims.append(job)
            if len(claims) == 2:  # the first slide is being read, the second was just claimed ahead
                stop.set()
            return job

        service.jobs.claim = claim_then_stop
        worker = Worker(service.ingest_context(), service.jobs, stop, max_attempts=1, backoff_seconds=0)
        assert worker.process(service.jobs.claim(), read_ahead=True) == "queued"
        jobs = _jobs(service)
        # both claimed slides went back with their attempt uncounted; the third was never claimed
        assert [(j["state"], j["attempts"]) for j in jobs] == [("queued", 0)] * 3, jobs
        assert service.stats()["slides"] == 0


# -- issue 24 item 2: a path holds one slide -------------------------------------------------------
def _versions(tmp_path) -> list[Path]:
    """Three different slides, each file an hour older than the one before (`cp -p` of older files)."""
    (tmp_path / "src").mkdir()
    paths = [_slide(tmp_path / "src" / f"v{i}.tiff", seed=i) for i in range(3)]
    for i, path in enumerate(paths):
        stamp = time.time() - 3600 * (i + 1)
        os.utime(path, (stamp, stamp))
    return paths


def _alone(tmp_path, content: Path, name: str, patient: str) -> dict:
    """Vectors of a fresh catalog that ingested only `content` (at a path of the same name)."""
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy2(content, alone / name)
    with _service(tmp_path / "data-alone") as service:
        service.ingest([alone / name], patient=patient)
        return _vectors(service, patient)


def _vectors(service, patient: str) -> dict:
    catalog = service.catalog
    (pid,) = catalog.patient_ids([patient]).values()
    out = {}
    for info in catalog.vector_sets():
        ids, matrix = catalog.load_vectors(info.kind, info.signature, [pid])
        if len(ids):
            out[info.kind] = matrix[0].copy()
    return out


def _one_slide_at(service, path: Path, content: Path, patient: str) -> tuple[int, list[int]]:
    from sqlalchemy import select

    from eagle_index.fingerprint import slide_fingerprint
    from eagle_index.store import tiles_repo
    from eagle_index.store.models import Slide

    catalog = service.catalog
    (pid,) = catalog.patient_ids([patient]).values()
    with catalog.transaction() as session:
        rows = session.execute(select(Slide.id, Slide.path, Slide.fingerprint, Slide.status).where(Slide.patient_id == pid)
                               .order_by(Slide.id)).all()
    done = [r for r in rows if r.status == "done"]
    assert [(r.path, r.fingerprint) for r in done] == [(str(path), slide_fingerprint(content))], rows
    old = [r.id for r in rows if r.status != "done"]
    assert old and all(tiles_repo.slide_tiles(catalog, sid) == [] for sid in old)
    tiles = tiles_repo.stored_patient_tiles(catalog, pid)
    assert tiles and {t.slide_id for t in tiles} == {done[0].id}
    for info in tiles_repo.tile_sets(catalog):  # the tile index holds the new slide's tiles only
        _, patients = tiles_repo.tile_ids(catalog, info.signature)
        assert int((patients == pid).sum()) == len(tiles)
    assert service.stats()["slides"] == 1
    return done[0].id, old


def _assert_same_vectors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for kind in want:
        assert np.array_equal(got[kind], want[kind]), kind  # bit-identical


def test_overwriting_a_watched_slide_supersedes_the_old_one(tmp_path):
    import shutil
    import threading

    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher
    from eagle_index.ingest.worker import Worker

    versions = _versions(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    target = inbox / "TCGA-AA-0031-01Z-00-DX1.tiff"
    with _service(tmp_path / "data") as service:
        watcher = Watcher([inbox], service.jobs, PatientResolver(), settle_seconds=0)
        worker = Worker(service.ingest_context(), service.jobs, threading.Event(), max_attempts=1, backoff_seconds=0)
        for version in versions:  # A, then B and C copied over it with their (older) times, like `cp -p`
            shutil.copy2(version, target)
            watcher.scan_once()
            assert [e["state"] for e in watcher.scan_once()] == ["queued"], version
            assert worker.process(service.jobs.claim()) == "done"
        current, old = _one_slide_at(service, target, versions[-1], "TCGA-AA-0031")
        got = _vectors(service, "TCGA-AA-0031")
        from eagle_index.errors import NotFoundError

        assert [s.id for s in service.viewer.patient("TCGA-AA-0031").slides] == [current]
        service.viewer.dzi(current)
        for slide_id in old:  # an old id never shows the new file's pixels
            with pytest.raises(NotFoundError, match="superseded"):
                service.viewer.dzi(slide_id)
    _assert_same_vectors(got, _alone(tmp_path, versions[-1], target.name, "TCGA-AA-0031"))


def test_ingesting_an_overwritten_path_supersedes_the_old_slide(tmp_path):
    import shutil

    versions = _versions(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    target = inbox / "TCGA-AA-0032-01Z-00-DX1.tiff"
    keep = _slide(inbox / "TCGA-AA-0032-01Z-00-DX2.tiff", seed=7)  # another slide of the patient stays
    with _service(tmp_path / "data") as service:
        for version in versions:
            shutil.copy2(version, target)
            report = service.ingest([target], patient="TCGA-AA-0032")
            assert len(report.ingested) == 1, report
        service.ingest([keep], patient="TCGA-AA-0032")
        service.ingest([target], patient="TCGA-AA-0032")  # unchanged: nothing to do
        shutil.copy2(versions[0], target)  # the path now holds A again, given to another patient
        service.ingest([target], patient="TCGA-AA-0033")
        catalog = service.catalog
        assert len(_vectors(service, "TCGA-AA-0033")) == 3
        from sqlalchemy import select

        from eagle_index.store.models import Slide

        (pid,) = catalog.patient_ids(["TCGA-AA-0032"]).values()
        with catalog.transaction() as session:
            done = session.scalars(select(Slide.path).where(Slide.patient_id == pid, Slide.status == "done")).all()
        assert done == [str(keep)]
        got = _vectors(service, "TCGA-AA-0032")
    _assert_same_vectors(got, _alone(tmp_path, keep, keep.name, "TCGA-AA-0032"))


def test_content_coming_back_to_a_watched_path_is_embedded_again(tmp_path):
    """A -> B -> A at one path (the daemon's queue keeps one job per fingerprint): A's job runs again and
    the path holds A's slide, not B's, with A's vectors."""
    import shutil
    import threading

    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher
    from eagle_index.ingest.worker import Worker

    a, b, _ = _versions(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    target = inbox / "TCGA-AA-0034-01Z-00-DX1.tiff"
    with _service(tmp_path / "data") as service:
        watcher = Watcher([inbox], service.jobs, PatientResolver(), settle_seconds=0)
        worker = Worker(service.ingest_context(), service.jobs, threading.Event(), max_attempts=1, backoff_seconds=0)
        for version in (a, b, a):
            shutil.copy2(version, target)
            watcher.scan_once()
            assert [e["state"] for e in watcher.scan_once()] == ["queued"], version
            assert worker.process(service.jobs.claim()) == "done"
        _one_slide_at(service, target, a, "TCGA-AA-0034")
        got = _vectors(service, "TCGA-AA-0034")
        assert service.jobs.claim() is None  # nothing else left queued
    _assert_same_vectors(got, _alone(tmp_path, a, target.name, "TCGA-AA-0034"))
