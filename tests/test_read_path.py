"""One read path (issue 22 item 1): patients, labels, slide names and stored query vectors are
answered by `Catalog` from memory until the writer's next commit (`Catalog.epoch`); job-queue and
probe-status writes are bookkeeping and keep what readers hold (issue 15's throughput)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import insert

from conftest import write_eagle_h5


def _fill(tmp_path, service, n=8):
    rng = np.random.default_rng(0)
    ids = [f"P-{i}" for i in range(n)]
    service.import_embeddings([write_eagle_h5(tmp_path / "c.h5", ids, rng.normal(size=(n, 32)).astype(np.float32))], kind="eagle")
    return rng


def test_hits_follow_every_committed_change(tmp_path, service):
    from eagle_index.store.models import Label, Slide

    rng = _fill(tmp_path, service)
    catalog = service.catalog
    first = {h.patient: h for h in service.search_patient("P-0", k=7)}
    assert all(h.labels == {} and not h.slides for h in first.values())
    directory, epoch = catalog.directory(), catalog.epoch
    assert list(service.search_patient("P-0", k=7)) == list(first.values())  # served from memory
    assert catalog.epoch == epoch and catalog.directory() is directory  # reads commit too, but change nothing

    pid = catalog.patient_ids(["P-3"])["P-3"]
    catalog.write(lambda session: catalog.put_label(session, pid, "MSI", "high", "test"))  # ORM write
    assert catalog.epoch > epoch
    assert {h.patient: h for h in service.search_patient("P-0", k=7)}["P-3"].labels == {"MSI": "high"}

    def core_insert(session):
        session.execute(insert(Label), [{"patient_id": pid, "name": "grade", "value": "2", "source": "test"}])
        session.execute(insert(Slide), [{"patient_id": pid, "name": "S-1", "fingerprint": "sha256:x", "status": "done"}])

    catalog.write(core_insert)  # Core insert
    hit = {h.patient: h for h in service.search_patient("P-0", k=7)}["P-3"]
    assert hit.labels == {"MSI": "high", "grade": "2"} and list(hit.slides) == ["S-1"]

    epoch = catalog.epoch
    with pytest.raises(RuntimeError, match="abort"):  # a rolled-back write changes nothing and keeps nothing stale
        def aborted(session):
            catalog.put_label(session, pid, "MSI", "low", "test")
            raise RuntimeError("abort")

        catalog.write(aborted)
    assert catalog.epoch == epoch
    assert {h.patient: h for h in service.search_patient("P-0", k=7)}["P-3"].labels["MSI"] == "high"

    new = rng.normal(size=(1, 32)).astype(np.float32)  # new vectors for P-0: the query vector is read again
    service.import_embeddings([write_eagle_h5(tmp_path / "d.h5", ["P-0"], new)], kind="eagle")
    fresh = service.searcher.search_patient("P-0", k=7)
    ids_, raw = catalog.load_vectors("eagle", fresh.query["signature"], [catalog.patient_ids(["P-0"])["P-0"]])
    assert np.allclose(catalog.stored_vector("eagle", fresh.query["signature"], int(ids_[0])), raw[0])


def test_job_queue_writes_keep_what_readers_hold(tmp_path, service):
    from eagle_index.store.catalog import WriteOutsideWriter
    from eagle_index.store.models import Label

    _fill(tmp_path, service)
    catalog = service.catalog
    directory, epoch = catalog.directory(), catalog.epoch
    state, job = service.jobs.enqueue("sha256:abc", str(tmp_path / "a.svs"), "P-1")
    assert state == "queued" and catalog.epoch == epoch + 1  # enqueue may supersede a failed slide row: a change
    directory, epoch = catalog.directory(), catalog.epoch
    claimed = service.jobs.claim()
    service.jobs.heartbeat(claimed.id, {"tiles": 3})
    service.jobs.fail(claimed.id, "boom", max_attempts=1, backoff_s=0)
    assert catalog.epoch == epoch and catalog.directory() is directory

    pid = catalog.patient_ids(["P-1"])["P-1"]
    with pytest.raises(WriteOutsideWriter, match="bookkeeping write changed labels"):  # checked, not trusted
        catalog.write(lambda s: catalog.put_label(s, pid, "MSI", "high", "test"), bookkeeping=True)
    with pytest.raises(WriteOutsideWriter, match="bookkeeping write changed labels"):
        catalog.write(lambda s: s.execute(insert(Label), [{"patient_id": pid, "name": "g", "value": "1", "source": "t"}]),
                      bookkeeping=True)
    assert catalog.labels_of([pid]) == {pid: {}} and catalog.epoch == epoch  # nothing of either was committed


def test_a_read_that_raced_a_commit_is_not_kept(tmp_path, service, monkeypatch):
    """A directory loaded from the catalog as it was before a commit is handed to its reader but
    never kept: the next read sees the commit (no sleeps: the load is held until the commit is done)."""
    from eagle_index.store.directory import PatientDirectory

    _fill(tmp_path, service)
    catalog = service.catalog
    pid = catalog.patient_ids(["P-2"])["P-2"]
    catalog.write(lambda s: None)  # drop what was kept
    loaded, release = threading.Event(), threading.Event()
    real_load = PatientDirectory.load

    def slow_load(rows):
        found = real_load(rows)
        if not loaded.is_set():
            loaded.set()
            assert release.wait(30)
        return found

    monkeypatch.setattr(PatientDirectory, "load", staticmethod(slow_load))
    seen: list = []
    reader = threading.Thread(target=lambda: seen.append(catalog.labels_of([pid])[pid]))
    reader.start()
    assert loaded.wait(30)  # the reader holds the catalog as it was
    catalog.write(lambda s: catalog.put_label(s, pid, "MSI", "high", "test"))
    release.set()
    reader.join(30)
    assert seen == [{}]  # what it read before the commit, answered once
    assert catalog.labels_of([pid])[pid] == {"MSI": "high"}  # and not kept


def test_label_reads_match_names_in_any_case_and_star(tmp_path, service):
    from eagle_index.errors import NotFoundError

    _fill(tmp_path, service)
    catalog = service.catalog
    ids = catalog.patient_ids([f"P-{i}" for i in range(8)])

    def write(session):
        for i, value in enumerate(["MSI-H", "MSS", "MSI-H", None, "  "]):
            catalog.put_label(session, ids[f"P-{i}"], "MSI", value, "test")
        catalog.put_label(session, ids["P-0"], "site", "A", "test")
        catalog.put_label(session, ids["P-2"], "site", "B", "test")

    catalog.write(write)
    assert catalog.label_names() == ["MSI", "site"]
    assert catalog.label_values("msi") == {ids["P-0"]: "MSI-H", ids["P-1"]: "MSS", ids["P-2"]: "MSI-H"}
    assert catalog.label_values("MSI", [ids["P-1"], ids["P-5"]]) == {ids["P-1"]: "MSS"}
    assert catalog.patients_with_labels({"msi": ["MSI-H"], "SITE": ["B"]}) == {ids["P-2"]}
    assert catalog.patients_with_labels({"MSI": ["*"]}) == {ids[f"P-{i}"] for i in (0, 1, 2, 4)}  # any stored value
    with pytest.raises(NotFoundError, match="unknown label 'grade'; known labels: MSI, site"):
        catalog.patients_with_labels({"MSI": ["nothing"], "grade": ["1"]})  # every name is checked, even past an empty set
