"""Typed results (issue 22 item 7): stats, status, evaluation, cohorts and listings are frozen
records whose JSON (`as_dict()`) is the contract the CLI's --json and the API print; a server's
JSON read back (`from_dict`) is the same record; front ends can read them like the dicts they
were, but cannot add a key."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import write_eagle_h5


@pytest.fixture
def filled(tmp_path, service):
    rng = np.random.default_rng(3)
    ids = [f"P-{i}" for i in range(12)]
    service.import_embeddings([write_eagle_h5(tmp_path / "v.h5", ids, rng.normal(size=(12, 16)).astype(np.float32))], kind="eagle")
    catalog = service.catalog
    pids = catalog.patient_ids(ids)
    catalog.write(lambda s: [catalog.put_label(s, pids[p], "MSI", ("high", "low")[i % 2], "t") for i, p in enumerate(ids)])
    service.cohorts.create("highs", labels=["MSI=high"])
    return service


def test_each_record_is_its_json_and_reads_back(filled):
    from eagle_index import results

    service = filled
    cases = [
        (service.stats(), results.CatalogStats.from_dict),
        (service.status(), results.StatusReport.from_dict),
        (service.searcher.evaluate_retrieval("MSI", (1, 3)), results.RetrievalEvaluation.from_dict),
        (service.cohorts.show("highs"), results.CohortSummary.from_dict),
        (service.cohorts.list()[0], results.CohortSummary.from_dict),
        (service.cohorts.preview({"labels": {"MSI": ["low"]}}), results.CohortPreview.from_dict),
    ]
    for record, read_back in cases:
        shown = json.loads(json.dumps(record.as_dict()))  # what --json prints and the API sends
        assert read_back(shown) == record and read_back(shown).as_dict() == record.as_dict(), type(record).__name__
        assert dict(record) == record.as_dict() and record == shown  # read as the dict it was
        with pytest.raises(TypeError):
            record["added"] = 1  # nothing adds a key
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.extra = 1

    stats = service.stats()
    assert (stats.patients, stats.labels, stats.vectors) == (12, 12, {"eagle": 12})
    assert [v.count for v in stats.vector_sets] == [12]
    shown = service.cohorts.show("highs")
    assert shown.member_count == 6 and all(m.labels == {"MSI": "high"} for m in shown.members)
    page = service.browse.list_patients(q="P-1", limit=2)
    assert (page.total, page.limit, page.offset, len(page.items)) == (3, 2, 0, 2)  # P-1, P-10, P-11
    assert service.browse.list_patients(allowed=set()).as_dict() == {"total": 0, "limit": 50, "offset": 0, "items": []}


def test_the_api_sends_the_records_json(filled):
    from web import create_app

    service = filled
    client = create_app(service=service).test_client()
    assert client.get("/api/v1/stats").get_json() == service.stats().as_dict()
    assert client.get("/api/v1/cohorts").get_json() == [c.as_dict() for c in service.cohorts.list()]
    answer = client.get("/api/v1/eval/retrieval?label=MSI&k=1,3").get_json()
    assert answer == service.searcher.evaluate_retrieval("MSI", (1, 3)).as_dict()
