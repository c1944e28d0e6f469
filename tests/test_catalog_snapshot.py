"""A `CatalogSnapshot` (store/snapshot.py) answers every read as `Catalog` does, without SQLAlchemy.

One-shot CLI reads (`stats`, `search`) open the catalog as a read-only DuckDB snapshot so they start
in well under a second (issue 20 item 4). Both classes share `CatalogReads`, so these tests compare
the answers of the two on one catalog holding every kind of row a read looks at (patients,
labels in two spellings, slides done / imported / superseded, two vector sets, a cohort, a failed
job), then check what a snapshot refuses: an old schema, a file another program holds.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import write_eagle_h5
from eagle_index.config import Settings
from eagle_index.errors import CatalogError, NotFoundError


def _fill(tmp_path, data):
    from eagle_index.service import EagleService
    from eagle_index.store.models import Job, Slide

    rng = np.random.default_rng(7)
    ids = [f"P-{i:02d}" for i in range(12)]
    with EagleService(Settings(data_dir=data)) as service:
        service.import_embeddings([write_eagle_h5(tmp_path / "e.h5", ids, rng.normal(size=(12, 24)).astype(np.float32))], kind="eagle")
        service.import_embeddings([write_eagle_h5(tmp_path / "c.h5", ids[:7], rng.normal(size=(7, 8)).astype(np.float32))], kind="chief")
        for i, pid in enumerate(ids):
            service.set_label(pid, "MSI" if i % 2 else "msi", "high" if i % 3 else "low")
        catalog = service.catalog
        pids = catalog.patient_ids(ids)

        def rows(session):
            for i, status in enumerate(("done", "imported", "superseded", "done")):
                session.add(Slide(patient_id=pids["P-01"], name=f"S-{i % 2}", fingerprint=f"sha256:{i}", status=status,
                                  artifact_path=f"/a/{i}.h5" if status == "done" else None, mpp=0.5))
            session.add(Job(fingerprint="sha256:bad", path="/x/bad.svs", state="failed"))

        catalog.write(rows)
        service.cohorts.create("high", labels=["msi=high"])
        service.search(patient="P-00", k=3)  # builds the index files a later search only opens
    return ids


def _reads(catalog, ids) -> dict:
    pids = sorted(catalog.patient_ids(ids).values())
    eagle = catalog.resolve_vector_set("eagle")
    return {
        "stats": catalog.stats(),
        "directory": catalog.directory(),
        "patient_ids": catalog.patient_ids([*ids, "nobody"]),
        "external_ids": catalog.external_ids([*pids, 999]),
        "all": catalog.all_patient_ids(),
        "holding": catalog.patients_holding(["sha256:1", "sha256:none"]),
        "slides_of": catalog.slides_of(pids),
        "done_slide_ids": catalog.done_slide_ids(pids[1]),
        "artifact_paths": catalog.artifact_paths(pids[1]),
        "cohort": catalog.cohort_member_ids(["high"]),
        "sets": catalog.vector_sets(),
        "default_kind": catalog.default_kind(),
        "chief_for_p0": catalog.resolve_vector_set("chief", patients=(pids[0],)),
        "vector_ids": catalog.vector_ids(eagle.kind, eagle.signature).tolist(),
        "load": [a.tolist() for a in catalog.load_vectors(eagle.kind, eagle.signature, pids[3:6])],
        "whole": [a.tolist() for a in catalog.load_vectors(eagle.kind, eagle.signature)],  # read_snapshot: ranges of one state
        "stored": catalog.stored_vector(eagle.kind, eagle.signature, pids[4]).tolist(),
        "label_names": catalog.label_names(),
        "label_name": catalog.label_name("Msi"),
        "label_values": catalog.label_values("MSI"),
        "with": catalog.patients_with_labels({"msi": ["low"]}),
        "labels_of": catalog.labels_of(pids),
    }


def test_a_snapshot_reads_what_the_catalog_reads(tmp_path):
    from eagle_index.service import EagleService
    from eagle_index.store.snapshot import CatalogSnapshot

    data = tmp_path / "data"
    ids = _fill(tmp_path, data)
    with EagleService(Settings(data_dir=data), create=False) as service:
        expected = _reads(service.catalog, ids)
        hits = service.search(patient="P-00", k=5, kind="eagle").hits
    assert expected["stats"] == {"patients": 12, "slides": 3, "labels": 12, "failed": 1, "vectors": {"chief": 7, "eagle": 12}}
    assert expected["cohort"] and expected["holding"] and expected["artifact_paths"] == ["/a/0.h5", "/a/3.h5"]

    snapshot = CatalogSnapshot(data / "catalog.duckdb")
    try:
        assert _reads(snapshot, ids) == expected
        with pytest.raises(NotFoundError, match="unknown cohort 'nope' \\(known: high\\)"):
            snapshot.cohort_member_ids(["nope"])
    finally:
        snapshot.close()
    with EagleService(Settings(data_dir=data), read_only=True) as service:
        assert type(service.catalog).__name__ == "CatalogSnapshot"
        assert service.search(patient="P-00", k=5, kind="eagle").hits == hits


def test_a_snapshot_cannot_write(tmp_path):
    import duckdb

    from eagle_index.store.snapshot import CatalogSnapshot

    data = tmp_path / "data"
    _fill(tmp_path, data)
    snapshot = CatalogSnapshot(data / "catalog.duckdb")
    try:
        with pytest.raises(duckdb.Error, match="read-only"):
            snapshot.read_rows("DELETE FROM labels")
        assert snapshot.stats()["labels"] == 12
    finally:
        snapshot.close()


def test_a_snapshot_refuses_an_old_schema_with_the_upgrade_command(tmp_path):
    from eagle_index.store import schema
    from eagle_index.store.snapshot import CatalogSnapshot

    path = tmp_path / "data" / "catalog.duckdb"
    path.parent.mkdir()
    engine = schema.make_engine(f"duckdb:///{path}")
    schema.upgrade(engine, "0002")
    engine.dispose()
    with pytest.raises(CatalogError, match=f"schema revision 0002, this version needs {schema.head_revision()}: "
                                           f"run `eagle-index db upgrade --data-dir {path.parent}`"):
        CatalogSnapshot(path)


HOLD = """
import sys, duckdb
connection = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_snapshot_of_a_file_another_program_holds_names_it(tmp_path):
    from eagle_index.store.snapshot import CatalogSnapshot

    data = tmp_path / "data"
    _fill(tmp_path, data)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(data / "catalog.duckdb")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # the lock is taken before we try
        with pytest.raises(CatalogError, match=r"catalog .*catalog.duckdb is locked by python[\d.]* \(PID \d+\)"):
            CatalogSnapshot(data / "catalog.duckdb")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
