"""The same cases against both implementations of `CatalogService`: the in-process `EagleService`
and `RemoteService`, which reaches a real waitress server holding the catalog over HTTP.

Expected answers come from brute force over the vectors written here, never from the other
implementation, so each side is checked on its own.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import clustered_vectors
from eagle_index.errors import EagleIndexError, NotFoundError
from eagle_index.interface import CatalogService
from eagle_index.search import SearchFilters

N, DIM = 60, 24
NAMES = [f"CASE-{i:03d}" for i in range(N)]
VECTORS = clustered_vectors(N, DIM, seed=7, clusters=3)
ORGAN = ["lung" if i % 3 == 0 else "colon" for i in range(N)]
MSI = ["high" if i % 4 == 0 else "low" for i in range(N)]


def _fill(service) -> None:
    catalog = service.catalog

    def write(session):
        ids = [catalog.patient_id(session, n, create=True) for n in NAMES]
        catalog.put_vectors(session, "eagle", "sig", ids, VECTORS, source="test")
        for pid, organ, msi in zip(ids, ORGAN, MSI):
            catalog.put_label(session, pid, "organ", organ, "test")
            catalog.put_label(session, pid, "MSI", msi, "test")
        catalog.add_slide(session, ids[0], "CASE-000-S1", "fp-case-000-s1", status="done", mpp=0.5)  # annotations' slide

    catalog.write(write)


def _brute(query: np.ndarray, k: int, keep=lambda i: True, skip: int | None = None) -> list[str]:
    normed = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    scores = normed @ (query / np.linalg.norm(query))
    order = sorted((i for i in range(N) if i != skip and keep(i)), key=lambda i: (-scores[i], i))
    return [NAMES[i] for i in order[:k]]


@pytest.fixture(scope="module")
def inbox(tmp_path_factory):
    """The folder the owner ingests from (the server's --watch root; the in-process service is handed it)."""
    return tmp_path_factory.mktemp("inbox")


@pytest.fixture(scope="module", params=["local", "remote"])
def svc(request, tmp_path_factory, inbox):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    settings = Settings(data_dir=tmp_path_factory.mktemp(f"iface-{request.param}") / "data")
    local = EagleService(settings)
    _fill(local)
    if request.param == "local":
        yield local
        local.close()
        return
    from waitress.server import create_server

    from eagle_index.client import OwnerClient, RemoteService
    from eagle_index.owner import OwnerInfo
    from web import create_app

    server = create_server(create_app(service=local, owner={"role": "serve", "roots": [str(inbox)]}), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield RemoteService(OwnerClient(OwnerInfo(pid=0, role="serve", url=f"http://127.0.0.1:{server.effective_port}")))
    from eagle_index.server import close_http_server

    close_http_server(server, thread)  # its loop thread ends here, not in a later test
    local.close()


def test_both_implement_the_protocol(svc):
    assert isinstance(svc, CatalogService)


def test_search_by_patient_with_filters_and_vote(svc):
    result = svc.search(patient="CASE-005", k=6, filters=SearchFilters.build(labels=["organ=colon"]), vote="MSI")
    assert [h.patient for h in result.hits] == _brute(VECTORS[5], 6, lambda i: ORGAN[i] == "colon", skip=5)
    assert [h.rank for h in result.hits] == list(range(1, 7)) and all(h.kind == "eagle" for h in result.hits)
    assert result.vote["label"] == "MSI" and sum(result.vote["counts"].values()) == 6
    assert result.query["patient"] == "CASE-005" and result.query["kind"] == "eagle"


def test_search_by_vector_and_plain_patient(svc):
    query = VECTORS[10] + 0.01
    assert [h.patient for h in svc.search(vector=query, k=5).hits] == _brute(query, 5)
    assert [h.patient for h in svc.search_patient("CASE-010", k=4)] == _brute(VECTORS[10], 4, skip=10)


def test_errors_are_the_same_kind(svc):
    with pytest.raises(NotFoundError, match="CASE-999"):
        svc.search(patient="CASE-999", k=3)
    with pytest.raises(EagleIndexError):
        svc.search(patient="CASE-001", vector=VECTORS[0], k=3)


def test_labels_stats_and_cohorts(svc):
    assert svc.set_label("CASE-001", "grade", "3")["grade"] == "3"
    stats = svc.stats()
    assert stats["patients"] == N and stats["vectors"] == {"eagle": N}
    made = svc.cohorts.create("lungs", labels=["organ=lung"])
    assert made["member_count"] == sum(o == "lung" for o in ORGAN)
    assert "lungs" in [c["name"] for c in svc.cohorts.list()]
    shown = svc.cohorts.show("lungs")
    assert sorted(m["patient"] for m in shown["members"]) == sorted(n for n, o in zip(NAMES, ORGAN) if o == "lung")
    svc.cohorts.delete("lungs")
    assert "lungs" not in [c["name"] for c in svc.cohorts.list()]


def test_cohort_export_writes_the_same_file(svc, tmp_path):
    svc.cohorts.create("colons", labels=["organ=colon"], replace=True)
    report = svc.cohorts.export("colons", "clinical", tmp_path / "colons.csv")
    lines = (tmp_path / "colons.csv").read_text().splitlines()
    assert lines[0].startswith("PATIENT") and len(lines) - 1 == report["rows"] == sum(o == "colon" for o in ORGAN)


def test_probe_train_list_apply(svc):
    from eagle_index.results import ProbeResult

    out = svc.probes.train("MSI", folds=3, name="msi-probe")
    assert isinstance(out, ProbeResult) and out.detail is not None  # the same type from both services
    assert out.name == "msi-probe" and out["kind"] == "eagle" and out.status == "done"
    assert out.as_dict() == svc.probes.get("msi-probe").as_dict()  # a server's extra keys ("task") are not part of it
    with pytest.raises(TypeError):
        out["task"] = None  # typed and frozen: a front end cannot add a key
    listed = svc.probes.list()
    assert all(isinstance(p, ProbeResult) and p.detail is None for p in listed)
    assert "msi-probe" in [p.name for p in listed]
    applied = svc.probes.apply("msi-probe", top=5)
    assert len(applied["candidates"]) == 5
    probs = [c["probability"] for c in applied["candidates"]]
    assert probs == sorted(probs, reverse=True)


def test_retrieval_evaluation(svc):
    report = svc.searcher.evaluate_retrieval("organ", ks=[1, 3])
    assert report["patients"] == N and report["kind"] == "eagle" and set(report["classes"]) == {"lung", "colon"}
    normed = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    sims = normed @ normed.T
    np.fill_diagonal(sims, -np.inf)
    nearest = [max(range(N), key=lambda j: (sims[i, j], -j)) for i in range(N)]
    assert report["overall"]["Acc@1"] == pytest.approx(np.mean([ORGAN[i] == ORGAN[j] for i, j in enumerate(nearest)]))


def test_annotations_import_export_edit_delete(svc, tmp_path):
    import json

    from eagle_index.errors import InputError

    features = [
        {"type": "Feature", "id": "f1", "geometry": {"type": "Polygon", "coordinates": [[[0.0, 0.0], [8.0, 0.0], [8.0, 4.0], [0.0, 4.0], [0.0, 0.0]]]},
         "properties": {"objectType": "annotation", "name": "R", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "id": "f2", "geometry": {"type": "Point", "coordinates": [3.5, 2.0]},
         "properties": {"objectType": "annotation", "color": [0, 0, 255]}},
    ]
    path = tmp_path / "q.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = svc.annotations.import_geojson("CASE-000-S1", path=path)
    assert out["imported"] == 2 and out["annotations"][0]["bbox_um"] == [0.0, 0.0, 4.0, 2.0]
    assert out["annotations"][0]["source"] == "q.geojson" and out["annotations"][1]["color"] == "#0000ff"
    assert svc.annotations.export_geojson("CASE-000-S1") == {"type": "FeatureCollection", "features": features}
    drawn = svc.annotations.create("CASE-000-S1", {"type": "Point", "coordinates": [1, 1]}, name="d", class_name="Tumor", color="#00ff00")
    assert (drawn["shape"], drawn["color"], drawn["source"]) == ("point", "#00ff00", "viewer")
    assert svc.annotations.update(drawn["id"], name="e")["name"] == "e"
    listed = svc.annotations.list("CASE-000-S1")
    assert [a["id"] for a in listed] == [a["id"] for a in out["annotations"]] + [drawn["id"]]
    assert svc.annotations.of_slide("CASE-000-S1")["annotations"] == listed
    assert svc.annotations.get(drawn["id"])["name"] == "e"
    bad = tmp_path / "bad.geojson"
    bad.write_text('[{"type": "Feature", "properties": {"name": "T"}, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}}]')
    with pytest.raises(InputError, match=r"bad.geojson: features\[0\] \('T'\): Polygon ring 0 \(outer\): needs at least 4"):
        svc.annotations.import_geojson("CASE-000-S1", path=bad)
    with pytest.raises(NotFoundError, match="unknown slide"):
        svc.annotations.list("CASE-999-S1")
    # the in-annotation filter: no selected tiles are stored here, so no patient passes; an unknown class is an error
    assert svc.search(patient="CASE-005", k=5, filters=SearchFilters.build(in_annotation=["tumor"])).hits == ()
    with pytest.raises(NotFoundError, match="no annotations of class 'stroma'"):
        svc.search(patient="CASE-005", k=5, filters=SearchFilters.build(in_annotation=["Stroma"]))
    with pytest.raises(NotFoundError, match="unknown annotation id 999999"):
        svc.annotations.delete([drawn["id"], 999999])
    assert svc.annotations.delete([a["id"] for a in listed]) == [a["id"] for a in listed]
    assert svc.annotations.list("CASE-000-S1") == []


def test_enqueue_only_inside_the_ingest_folders(svc, inbox, tmp_path):
    """One enqueue (eagle_index/ingest/enqueue.py) on both sides: a slide inside the owner's folders is
    queued once per content, a path outside is an InputError naming it (issue 22 item 6)."""
    from eagle_index.errors import InputError
    from eagle_index.service import EagleService

    roots = {"roots": [inbox]} if isinstance(svc, EagleService) else {}  # a server's roots are its --watch folders
    slide = inbox / "CASE-900.svs"
    slide.write_bytes(b"not really a slide: the queue only fingerprints it")
    first = svc.enqueue([str(slide)], **roots)
    assert first["refused"] == [] and [(j["file"], j["state"]) for j in first["jobs"]] == [(str(slide.resolve()), "queued")]
    again = svc.enqueue([str(slide)], patient="CASE-900", **roots)
    assert again["jobs"] == [{"file": str(slide.resolve()), "state": "duplicate", "job": first["jobs"][0]["job"]}]
    outside = tmp_path / "CASE-901.svs"
    outside.write_bytes(b"elsewhere")
    with pytest.raises(InputError, match="is outside the folders this server ingests from"):
        svc.enqueue([str(outside)], **roots)
