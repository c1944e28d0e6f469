"""Cohorts and probes through the API (Flask test client); last, a check that the API tests
called every `/api/v1` route (method and rule)."""

from __future__ import annotations

import pytest

from test_web_fixtures import CALLED, api_env, error_of, wait_task


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from api_env(tmp_path_factory, "web-api-workflows")


@pytest.fixture
def client(env):
    return env["client"]


# -- cohorts ---------------------------------------------------------------------------------------
def test_cohorts_create_list_members_refresh_delete(client):
    definition = {"labels": {"TISSUE": ["dense"]}}
    preview = client.post("/api/v1/cohorts/preview", json={"definition": definition}).get_json()
    assert preview["count"] == 14 and len(preview["members"]) == 14
    created = client.post("/api/v1/cohorts", json={"name": "dense", "definition": definition})
    assert created.status_code == 201 and created.get_json()["member_count"] == 14
    client.post("/api/v1/cohorts", json={"name": "site A", "definition": {"labels": {"SITE": ["site-A"]}}})
    assert {c["name"] for c in client.get("/api/v1/cohorts").get_json()} >= {"dense", "site A"}
    shown = client.get("/api/v1/cohorts/dense?limit=5&offset=10").get_json()
    assert shown["member_count"] == 14 and len(shown["members"]) == 4
    members = client.get("/api/v1/cohorts/dense/members?limit=20").get_json()
    assert members["total"] == 14 and all(m["labels"]["TISSUE"] == "dense" for m in members["members"])
    both = client.post("/api/v1/cohorts/preview", json={"definition": {"cohorts": ["dense", "site A"]}}).get_json()
    assert 0 < both["count"] < 14
    assert client.post("/api/v1/cohorts/dense/refresh").get_json()["member_count"] == 14
    error_of(client.post("/api/v1/cohorts", json={"name": "dense", "definition": definition}), 400)
    error_of(client.post("/api/v1/cohorts", json={"definition": definition}), 400, "name")
    error_of(client.post("/api/v1/cohorts", json={"name": "a/b", "definition": definition}), 400, "name")
    error_of(client.post("/api/v1/cohorts", json={"name": "x", "definition": {"color": 1}}), 400, "definition")
    error_of(client.post("/api/v1/cohorts", json={"name": "x", "definition": {"seeds": ["CASE-001"]}}), 400, "definition")
    error_of(client.post("/api/v1/cohorts/preview", json={"definition": "all"}), 400, "definition")
    for bad in ({"seeds": ["IMP-001"], "min_similarity": "high"}, {"seeds": 3}, {"labels": {"TISSUE": {"a": 1}}}, {"probe": 1}):
        error_of(client.post("/api/v1/cohorts/preview", json={"definition": bad}), 400, "definition")
    seeded = client.post("/api/v1/cohorts/preview", json={"definition": {"seeds": "IMP-001", "min_similarity": 0.99}}).get_json()
    assert {m["patient"] for m in seeded["members"]} == {"IMP-001", "IMP-002"}
    error_of(client.get("/api/v1/cohorts/nope"), 404)
    error_of(client.get("/api/v1/cohorts/nope/members"), 404)
    error_of(client.post("/api/v1/cohorts/nope/refresh"), 404)
    client.post("/api/v1/cohorts", json={"name": "scratch", "definition": {"seeds": ["IMP-001"], "min_similarity": 0.99}})
    assert client.delete("/api/v1/cohorts/scratch").get_json() == {"deleted": "scratch"}
    error_of(client.delete("/api/v1/cohorts/scratch"), 404)


def test_cohort_exports_download(client, tmp_path):
    import h5py

    client.post("/api/v1/cohorts", json={"name": "export me", "definition": {"labels": {"TISSUE": ["dense"]}}})
    stamp = client.get("/api/v1/cohorts/export%20me/export/stamp")
    assert stamp.status_code == 200 and stamp.headers["Content-Disposition"].startswith("attachment")
    lines = stamp.get_data(as_text=True).splitlines()
    assert lines[0] == "PATIENT,FILENAME" and "CASE-001,CASE-001-S1.tiff" in lines
    clinical = client.get("/api/v1/cohorts/export%20me/export/clinical").get_data(as_text=True).splitlines()
    assert clinical[0].startswith("PATIENT,") and len(clinical) == 15
    (tmp_path / "c.h5").write_bytes(client.get("/api/v1/cohorts/export%20me/export/eagle-h5").data)
    with h5py.File(tmp_path / "c.h5") as handle:
        assert len(handle.keys()) == 14 and "CASE-002" in handle
    parquet = client.get("/api/v1/cohorts/export%20me/export/parquet")
    assert parquet.status_code == 200 and parquet.data[:4] == b"PAR1"
    error_of(client.get("/api/v1/cohorts/export%20me/export/zip"), 400, "format")
    error_of(client.get("/api/v1/cohorts/nope/export/stamp"), 404)


def test_cohort_map_duplicates_and_leakage(client):
    client.post("/api/v1/cohorts", json={"name": "pale", "definition": {"labels": {"TISSUE": ["pale"]}}})
    client.post("/api/v1/cohorts", json={"name": "all dense or pale", "definition": {"labels": {"TISSUE": ["dense", "pale"]}}})
    mapped = client.get("/api/v1/cohorts/pale/map").get_json()
    assert len(mapped["points"]) == 13 and "path" not in mapped
    assert all("pale" in p["cohorts"] and {"x", "y", "patient", "labels"} <= set(p) for p in mapped["points"])
    error_of(client.get("/api/v1/cohorts/pale/map?seed=-1"), 400, "seed")
    error_of(client.get("/api/v1/cohorts/nope/map"), 404)
    dups = client.get("/api/v1/quality/duplicates?threshold=0.99").get_json()
    assert {(p["a"], p["b"]) for p in dups["pairs"]} >= {("IMP-001", "IMP-002")}
    rescan = next(p for p in dups["pairs"] if (p["a"], p["b"]) == ("IMP-001", "IMP-002"))
    assert rescan["label_conflicts"] == {"MSI": ["high", "low"], "SITE": ["site-A", "site-B"], "TISSUE": ["dense", "pale"]}
    error_of(client.get("/api/v1/quality/duplicates?threshold=2"), 400, "threshold")
    leak = client.get("/api/v1/quality/leakage?a=pale&b=all%20dense%20or%20pale&threshold=0.99").get_json()
    assert leak["leak"] is True and len(leak["shared_patients"]) == 13
    error_of(client.get("/api/v1/quality/leakage?a=pale"), 400, "b")
    error_of(client.get("/api/v1/quality/leakage?b=pale"), 400, "a")
    error_of(client.get("/api/v1/quality/leakage?a=pale&b=nope"), 404)


# -- probes ------------------------------------------------------------------------------------------
def test_probe_training_in_the_background_and_its_results(client):
    started = client.post("/api/v1/probes", json={"label": "MSI", "folds": 3, "name": "msi"})
    assert started.status_code == 202
    body = started.get_json()
    assert body["probe"] == "msi" and body["status_url"] == "/api/v1/probes/msi"
    task = wait_task(client, body["task"])
    assert task["state"] == "done" and task["progress"]["done"] == task["progress"]["total"] == 4
    probe = client.get("/api/v1/probes/msi").get_json()
    assert probe["status"] == "done" and probe["positive"] == "high" and probe["n"] == 28  # 12 have no MSI value
    assert set(probe["auroc"]) == {"mean", "sd"} and len(probe["per_fold"]) == 3 and probe["task"]["state"] == "done"
    assert [p["name"] for p in client.get("/api/v1/probes").get_json()] == ["msi"]
    roc = client.get("/api/v1/probes/msi/roc").get_json()
    assert roc["points"][0] == [0.0, 0.0] and roc["points"][-1] == [1.0, 1.0] and len(roc["folds"]) == 3
    assert roc["n"] == 28 and roc["n_positive"] == 10 and 0.5 < roc["auroc"] <= 1.0
    training = client.get("/api/v1/probes/msi/training-set").get_json()
    assert len(training["patients"]) == 28 and len(training["oof"][0]) == 2
    applied = client.post("/api/v1/probes/msi/apply", json={"top": 5, "exclude_training": False}).get_json()
    assert applied["scored"] == 40 and [c["rank"] for c in applied["candidates"]] == [1, 2, 3, 4, 5]
    assert all("thumbnail_url" in c for c in applied["candidates"])
    unknown = client.post("/api/v1/probes/msi/apply", json={"top": 50, "exclude_training": True}).get_json()["candidates"]
    assert sorted(c["patient"] for c in unknown) == [f"IMP-{i:03d}" for i in range(25, 37)]
    assert all(c["label_value"] is None and not c["in_training"] for c in unknown)
    ranked = client.get("/api/v1/probes/msi/candidates?limit=10&offset=0").get_json()
    assert ranked["total"] == 40 and [c["patient"] for c in ranked["candidates"][:5]] == [c["patient"] for c in applied["candidates"]]
    assert [c["rank"] for c in client.get("/api/v1/probes/msi/candidates?limit=3&offset=37").get_json()["candidates"]] == [38, 39, 40]
    csv_text = client.get("/api/v1/probes/msi/candidates.csv").get_data(as_text=True).splitlines()
    assert csv_text[0] == "rank,patient,probability,predicted,label_value,in_training" and len(csv_text) == 41


def test_probe_errors(client):
    error_of(client.post("/api/v1/probes", json={}), 400, "label")
    error_of(client.post("/api/v1/probes", json={"label": "MSI", "folds": 1}), 400, "folds")
    error_of(client.post("/api/v1/probes", json={"label": "MSI", "vs_rest": "perhaps"}), 400, "vs_rest")
    error_of(client.post("/api/v1/probes", json={"label": "MSI", "name": "a/b"}), 400, "name")
    error_of(client.post("/api/v1/probes", json={"label": "NO-SUCH-LABEL"}), 404)
    error_of(client.post("/api/v1/probes", json={"label": "MSI", "model": "forest"}), 400)
    error_of(client.post("/api/v1/probes", json={"label": "MSI", "folds": 20}), 400)  # too few per class
    for path in ("/api/v1/probes/nope", "/api/v1/probes/nope/roc", "/api/v1/probes/nope/candidates",
                 "/api/v1/probes/nope/candidates.csv", "/api/v1/probes/nope/training-set"):
        error_of(client.get(path), 404)
    error_of(client.post("/api/v1/probes/nope/apply", json={}), 404)
    error_of(client.delete("/api/v1/probes/nope"), 404)
    error_of(client.post("/api/v1/probes/msi/apply", json={"top": 0}), 400, "top")


def test_fewshot_curve_and_probe_delete(client):
    started = client.post("/api/v1/fewshot", json={"label": "MSI", "ks": [1, 2, 4], "draws": 2})
    assert started.status_code == 202
    task = wait_task(client, started.get_json()["task"])
    curve = task["result"]["curve"]
    assert [p["k"] for p in curve] == [1, 2, 4] and all("auroc" in p for p in curve)
    error_of(client.post("/api/v1/fewshot", json={"label": "MSI", "ks": [0]}), 400, "ks")
    error_of(client.post("/api/v1/fewshot", json={"label": "MSI", "ks": "1,2"}), 400, "ks")
    error_of(client.post("/api/v1/fewshot", json={"label": "MSI", "draws": 0}), 400, "draws")
    error_of(client.post("/api/v1/fewshot", json={"label": "NOPE"}), 404)
    client.post("/api/v1/probes", json={"label": "TISSUE", "folds": 3, "name": "tissue"})
    wait_task(client, client.get("/api/v1/probes/tissue").get_json()["task"]["id"])
    assert client.delete("/api/v1/probes/tissue").get_json() == {"deleted": "tissue"}
    error_of(client.get("/api/v1/probes/tissue"), 404)


def test_probe_comparison_route(client, env):
    """POST /compare (the CLI's `probe compare` while a server holds the catalog): a task whose result is the service's."""
    body = {"labels": ["MSI"], "kind": "eagle", "against": "eagle", "model": "logreg", "against_model": "mlp", "folds": 3}
    started = client.post("/api/v1/compare", json=body)
    assert started.status_code == 202
    result = wait_task(client, started.get_json()["task"])["result"]
    assert result == env["service"].probes.compare(["MSI"], "eagle", "eagle", "logreg", "mlp", 3)
    error_of(client.post("/api/v1/compare", json={"labels": []}), 400, "labels")
    error_of(client.post("/api/v1/compare", json={"labels": ["MSI"], "model": "svm"}), 400, "model")
    error_of(client.post("/api/v1/compare", json={"labels": ["MSI"], "against": "nope"}), 404)


def test_retrieval_evaluation_route(client, env):
    report = client.get("/api/v1/eval/retrieval?label=TISSUE&k=1,3").get_json()
    assert report == env["service"].searcher.evaluate_retrieval("TISSUE", [1, 3])
    error_of(client.get("/api/v1/eval/retrieval"), 400, "label")
    error_of(client.get("/api/v1/eval/retrieval?label=TISSUE&k=a"), 400, "k")
    error_of(client.get("/api/v1/eval/retrieval?label=NOPE"), 404)


def test_annotation_routes(client):
    """Every annotations route once on the web archive (their contract: tests/test_annotations_api.py)."""
    rect = {"type": "Polygon", "coordinates": [[[448.0, 448.0], [1344.0, 448.0], [1344.0, 1344.0], [448.0, 1344.0], [448.0, 448.0]]]}
    made = client.post("/api/v1/slides/CASE-002-S1/annotations", json={"name": "r", "class_name": "Tumor", "geometry": rect})
    assert made.status_code == 201, made.get_data(as_text=True)
    ann = made.get_json()
    assert client.get("/api/v1/slides/CASE-002-S1/annotations").get_json()["annotations"] == [ann]
    assert client.get(f"/api/v1/annotations/{ann['id']}").get_json() == ann
    assert client.get("/api/v1/annotations").get_json()["annotations"] == [ann]
    assert client.put(f"/api/v1/annotations/{ann['id']}", json={"name": "s"}).get_json()["name"] == "s"
    exported = client.get("/api/v1/slides/CASE-002-S1/annotations.geojson").get_json(force=True)
    assert [f["geometry"] for f in exported["features"]] == [rect]
    imported = client.post("/api/v1/slides/CASE-002-S1/annotations/import", json=exported).get_json()
    assert imported["imported"] == 1
    hits = client.post("/api/v1/search/tiles", json={"slide": "CASE-002-S1", "annotation": ann["id"], "k": 3, "format": "geojson"})
    assert hits.status_code == 200 and len(hits.get_json(force=True)["features"]) == 3
    assert client.post("/api/v1/annotations/delete", json={"ids": [imported["annotations"][0]["id"]]}).status_code == 200
    assert client.delete(f"/api/v1/annotations/{ann['id']}").get_json() == {"deleted": ann["id"]}


def test_every_api_route_was_called(env, request):
    """Every /api/v1 route was requested by a test of the two API modules that ran and passed here.

    What counts is what those tests executed (CALLED: each request an api_env app served, with the
    test that made it, recorded by an after_request hook; PASSED: the tests whose call passed), not
    what was collected, nor what other modules' tests (test_web_viewer also uses api_env) requested
    when they happened to run in the same process."""
    import test_web_api
    from conftest import PASSED

    modules = (test_web_api, request.module)
    expected = {f"{m.__name__}::{n}" for m in modules for n in dir(m) if n.startswith("test_") and callable(getattr(m, n))}
    expected.discard(f"{request.module.__name__}::{request.node.name}")
    items = [i for i in request.session.items if i.module in modules and i is not request.node]
    passed = {i.nodeid for i in items if i.nodeid in PASSED}
    ran = {f"{i.module.__name__}::{i.originalname}" for i in items if i.nodeid in passed}
    if ran != expected or len(passed) != len(items):
        pytest.skip(f"only meaningful when every test of both API modules ran and passed in this process; "
                    f"did not: {sorted(expected - ran) or sorted(i.nodeid for i in items if i.nodeid not in passed)}")
    routes = {(m, r.rule) for r in env["app"].url_map.iter_rules() if r.rule.startswith("/api/v1")
              for m in r.methods - {"HEAD", "OPTIONS"}}
    called = {route for route, tests in CALLED.items() if tests & passed}
    assert routes - called == set()
