"""Search hits read patient facts from a cache that any committed write drops (issue 15, throughput)."""

from __future__ import annotations

import numpy as np
from sqlalchemy import insert

from conftest import write_eagle_h5


def test_hits_follow_every_committed_change(tmp_path, service):
    from eagle_index.store.models import Label, Slide

    rng = np.random.default_rng(0)
    ids = [f"P-{i}" for i in range(8)]
    service.import_embeddings([write_eagle_h5(tmp_path / "c.h5", ids, rng.normal(size=(8, 32)).astype(np.float32))], kind="eagle")
    first = {h.patient: h for h in service.search_patient("P-0", k=7)}
    assert all(h.labels == {} and not h.slides for h in first.values())
    reads = service.searcher.reads
    generation = reads.generation
    assert list(service.search_patient("P-0", k=7)) == list(first.values())  # served from memory
    assert reads.generation == generation  # reads commit too, but do not invalidate

    pid = service.catalog.patient_ids(["P-3"])["P-3"]
    service.catalog.write(lambda session: service.catalog.put_label(session, pid, "MSI", "high", "test"))  # ORM write
    assert reads.generation > generation
    assert {h.patient: h for h in service.search_patient("P-0", k=7)}["P-3"].labels == {"MSI": "high"}

    def core_insert(session):
        session.execute(insert(Label), [{"patient_id": pid, "name": "grade", "value": "2", "source": "test"}])
        session.execute(insert(Slide), [{"patient_id": pid, "name": "S-1", "fingerprint": "sha256:x", "status": "done"}])

    service.catalog.write(core_insert)  # Core insert
    hit = {h.patient: h for h in service.search_patient("P-0", k=7)}["P-3"]
    assert hit.labels == {"MSI": "high", "grade": "2"} and list(hit.slides) == ["S-1"]

    try:  # a rolled-back write changes nothing and keeps nothing stale
        def aborted(session):
            service.catalog.put_label(session, pid, "MSI", "low", "test")
            raise RuntimeError("abort")

        service.catalog.write(aborted)
    except RuntimeError:
        pass
    assert {h.patient: h for h in service.search_patient("P-0", k=7)}["P-3"].labels["MSI"] == "high"

    new = rng.normal(size=(1, 32)).astype(np.float32)  # new vectors for P-0: the query vector is read again
    service.import_embeddings([write_eagle_h5(tmp_path / "d.h5", ["P-0"], new)], kind="eagle")
    fresh = service.searcher.search_patient("P-0", k=7)
    ids_, raw = service.catalog.load_vectors("eagle", fresh.query["signature"], [service.catalog.patient_ids(["P-0"])["P-0"]])
    assert np.allclose(service.searcher.reads.vector("eagle", fresh.query["signature"], int(ids_[0])), raw[0])
