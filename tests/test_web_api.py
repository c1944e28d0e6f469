"""The JSON API through Flask's test client: the OpenAPI document, search, patients, slides,
labels, images, jobs and error handling (cohorts and probes: test_web_api_workflows.py)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_web_fixtures import PNG, api_env, archive_copy, error_of, rule_path, wait_task


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from api_env(tmp_path_factory, "web-api")


@pytest.fixture
def client(env):
    return env["client"]


# -- the document --------------------------------------------------------------------------------
def test_openapi_documents_every_route_and_nothing_else(client, env):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    registered = {(m.lower(), rule_path(r.rule)) for r in env["app"].url_map.iter_rules() if r.rule.startswith("/api/v1")
                  for m in r.methods - {"HEAD", "OPTIONS"}}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert registered == documented
    for path, ops in doc["paths"].items():
        names = set(re.findall(r"\{([a-z_]+)\}", path))
        for op in ops.values():
            assert names == {p["name"] for p in op["parameters"] if p["in"] == "path"}, path
            assert "400" in op["responses"] and "404" in op["responses"]


# -- server ----------------------------------------------------------------------------------------
def test_health_stats_status_meta(client):
    assert client.get("/api/v1/health").get_json()["ok"] is True
    stats = client.get("/api/v1/stats").get_json()
    assert stats["patients"] == 40 and stats["slides"] == 5
    status = client.get("/api/v1/status").get_json()
    assert set(status["queue"]) == {"queued", "running", "done", "failed", "skipped"}
    meta = client.get("/api/v1/meta").get_json()
    assert "eagle" in meta["kinds"] and {lab["name"] for lab in meta["labels"]} == {"TISSUE", "SITE", "MSI"}
    assert meta["probe_models"] == ["logreg", "mlp"] and "stamp" in meta["export_formats"]
    error_of(client.get("/api/v1/tasks/nope"), 404)
    error_of(client.get("/api/v1/no-such-route"), 404)
    error_of(client.delete("/api/v1/stats"), 405)


# -- search: same JSON as the CLI -------------------------------------------------------------------
def test_search_matches_the_cli_json_exactly(tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService
    from web import create_app

    data = archive_copy(tmp_path_factory, "web-parity")
    cli = subprocess.run([sys.executable, "-m", "eagle_index", "search", "--patient", "CASE-001", "-k", "5", "--kind", "eagle",
                          "--json", "--data-dir", str(data)], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "EAGLE_INDEX_LOG": "WARNING"})
    assert cli.returncode == 0, cli.stderr
    with EagleService(Settings(data_dir=data)) as service:
        client = create_app(service=service).test_client()
        response = client.get("/api/v1/search?patient=CASE-001&k=5&kind=eagle")
        assert response.status_code == 200
        # one shape, always: {"hits", "vote"}; each hit is exactly what the CLI prints
        assert response.get_json() == {"hits": json.loads(cli.stdout), "vote": None}
        assert [h["rank"] for h in response.get_json()["hits"]] == [1, 2, 3, 4, 5]
        error_of(client.get("/api/v1/search?patient=CASE-001&k=five"), 400, "k")


def test_search_get_errors_and_filters(client):
    error_of(client.get("/api/v1/search"), 400, "patient")
    error_of(client.get("/api/v1/search?patient=CASE-001&k=0"), 400, "k")
    error_of(client.get("/api/v1/search?patient=CASE-001&k=1.5"), 400, "k")
    error_of(client.get("/api/v1/search?patient=NOBODY"), 404)
    error_of(client.get("/api/v1/search?patient=CASE-001&label=TISSUE"), 400, "label")
    error_of(client.get("/api/v1/search?patient=CASE-001&min_score=high"), 400, "min_score")
    error_of(client.get("/api/v1/search?patient=CASE-001&exclude_site=maybe"), 400, "exclude_site")
    hits = client.get("/api/v1/search?patient=IMP-001&k=5&label=TISSUE=dense").get_json()["hits"]
    assert len(hits) == 5 and all(h["labels"]["TISSUE"] == "dense" for h in hits)
    assert client.get("/api/v1/search?patient=IMP-001&k=1").get_json()["hits"][0]["patient"] == "IMP-002"
    voted = client.get("/api/v1/search?patient=IMP-001&k=5&vote=TISSUE&exclude_same=SITE").get_json()
    assert set(voted) == {"hits", "vote"} and voted["vote"]["label"] == "TISSUE"
    assert all(h["labels"]["SITE"] != "site-A" for h in voted["hits"])  # IMP-001 is site-A
    explained = client.get("/api/v1/search?patient=CASE-001&k=2&explain=1").get_json()
    assert set(explained) == {"hits", "vote"} and explained["vote"] is None
    assert all("explanation" in h for h in explained["hits"])


def test_search_post_by_patient_and_vector(client, env):
    body = {"patient": "CASE-001", "k": 3, "vote": "TISSUE", "explain": True, "filters": {"labels": {"TISSUE": ["dense", "pale"]}}}
    result = client.post("/api/v1/search", json=body).get_json()
    assert set(result) >= {"query", "hits", "vote", "filters", "notes"}
    assert [h["patient"] for h in result["hits"]][0] == "CASE-002"
    case = next(h for h in result["hits"] if h["patient"] == "CASE-002")
    assert case["thumbnail_url"] == "/api/v1/patients/CASE-002/thumbnail.png"
    pair = case["explanation"][0]
    for key in ("query_tile_url", "hit_tile_url"):
        image = client.get(pair[key])
        assert image.status_code == 200 and image.data.startswith(PNG)
    assert all(h["thumbnail_url"] == f"/api/v1/patients/{h['patient']}/thumbnail.png" for h in result["hits"]
               if h["patient"].startswith("CASE"))
    svc = env["service"]
    eagle = svc.catalog.vector_sets("eagle")[0]
    _, vectors = svc.catalog.load_vectors("eagle", eagle.signature, list(svc.catalog.patient_ids(["IMP-001"]).values()))
    by_vector = client.post("/api/v1/search", json={"vector": vectors[0].tolist(), "k": 2}).get_json()
    assert [h["patient"] for h in by_vector["hits"]] == ["IMP-001", "IMP-002"]
    assert [h["thumbnail_url"] for h in by_vector["hits"]] == [None, None]  # imported patients: no slide to draw
    error_of(client.post("/api/v1/search", json={"patient": "CASE-001", "vector": [1.0]}), 400, "patient")
    error_of(client.post("/api/v1/search", json={}), 400, "patient")
    error_of(client.post("/api/v1/search", json={"vector": ["a"]}), 400, "vector")
    error_of(client.post("/api/v1/search", json={"vector": [0.0] * eagle.dim}), 400, "vector")
    error_of(client.post("/api/v1/search", json={"patient": "CASE-001", "filters": {"colour": "red"}}), 400, "filters")
    error_of(client.post("/api/v1/search", json={"patient": "CASE-001", "filters": []}), 400, "filters")
    for bad in ({"min_score": "high"}, {"cohorts": 5}, {"labels": {"TISSUE": 3}}, {"exclude_same_site": "yes"}, {"labels": 7}):
        error_of(client.post("/api/v1/search", json={"patient": "CASE-001", "filters": bad}), 400, "filters")
    one = client.post("/api/v1/search", json={"patient": "CASE-001", "k": 3, "filters": {"exclude_patients": "CASE-002"}}).get_json()
    assert "CASE-002" not in [h["patient"] for h in one["hits"]]  # a single string is one id, not its characters
    error_of(client.post("/api/v1/search", json={"patient": "CASE-001", "k": "many"}), 400, "k")
    error_of(client.post("/api/v1/search", data="[1, 2]", content_type="application/json"), 400, "body")
    error_of(client.post("/api/v1/search", json={"vector": [1.0, 2.0]}), 404)  # no vectors of this dimension


def test_matching_tile_pairs(client):
    data = client.get("/api/v1/patients/CASE-001/matches/CASE-002?pairs=3").get_json()
    assert len(data["pairs"]) == 3 and all(p["query_tile_url"] and p["hit_tile_url"] for p in data["pairs"])
    sims = [p["similarity"] for p in data["pairs"]]
    assert sims == sorted(sims, reverse=True)
    error_of(client.get("/api/v1/patients/CASE-001/matches/IMP-001"), 404)
    error_of(client.get("/api/v1/patients/CASE-001/matches/NOBODY"), 404)
    error_of(client.get("/api/v1/patients/CASE-001/matches/CASE-002?pairs=x"), 400, "pairs")


def test_search_by_uploaded_slide(client, env):
    slide = env["slides"] / "CASE-003-S1.tiff"
    response = client.post("/api/v1/search/upload", data={"file": (io.BytesIO(slide.read_bytes()), "my scan.tiff"), "k": "3",
                                                          "vote": "TISSUE", "patient": "CASE-003"},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    started = response.get_json()
    task = wait_task(client, started["task"])
    assert task["state"] == "done", task
    result = task["result"]
    assert "CASE-003" not in [h["patient"] for h in result["hits"]]  # the query patient is left out
    assert result["upload"]["name"] == "my scan.tiff" and result["query"]["slides"] == ["my scan.tiff"]
    stored = list((env["data"] / "uploads").glob(f"{started['upload']}.*"))
    assert [p.suffix for p in stored] == [".tiff"]  # a generated name; the client's name is never a path
    thumb = client.get(result["upload"]["thumbnail_url"] + "?size=256")
    assert thumb.status_code == 200 and thumb.data.startswith(PNG)
    pair = next(h for h in result["hits"] if h.get("explanation"))["explanation"][0]
    assert client.get(pair["query_tile_url"]).data.startswith(PNG)
    error_of(client.get(f"/api/v1/uploads/{started['upload']}/tile.png?x_um=999999&y_um=0"), 404)
    error_of(client.get(f"/api/v1/uploads/{started['upload']}/tile.png?x_um=0"), 400, "y_um")
    for bad in ("..", "x" * 32, "../../catalog", started["upload"][:31]):
        assert client.get(f"/api/v1/uploads/{bad}/thumbnail.png").status_code == 404
    error_of(client.post("/api/v1/search/upload", data={}, content_type="multipart/form-data"), 400, "file")
    error_of(client.post("/api/v1/search/upload", data={"file": (io.BytesIO(b"x"), "../../evil.sh")},
                         content_type="multipart/form-data"), 400, "file")
    error_of(client.post("/api/v1/search/upload", data={"file": (io.BytesIO(b"x"), "a.tiff"), "k": "ten"},
                         content_type="multipart/form-data"), 400, "k")
    broken = client.post("/api/v1/search/upload", data={"file": (io.BytesIO(b"not a slide"), "broken.tiff")},
                         content_type="multipart/form-data")
    failed = wait_task(client, broken.get_json()["task"])
    assert failed["state"] == "failed" and "Traceback" not in failed["error"]


# -- patients, slides, labels --------------------------------------------------------------------
def test_patients_list_filters_and_paging(client):
    page = client.get("/api/v1/patients?limit=10&offset=5").get_json()
    assert page["total"] == 40 and len(page["items"]) == 10
    typed = client.get("/api/v1/patients?q=case-00&limit=3").get_json()
    assert typed["total"] == 4 and [i["patient"] for i in typed["items"]] == ["CASE-001", "CASE-002", "CASE-003"]
    assert typed["items"][0]["slides"] == 2 and "eagle" in typed["items"][0]["vectors"]
    assert client.get("/api/v1/patients?q=%25").get_json()["total"] == 0  # LIKE wildcards are literal
    dense = client.get("/api/v1/patients?label=TISSUE=dense&limit=100").get_json()
    assert dense["total"] == 14 and all(i["labels"]["TISSUE"] == "dense" for i in dense["items"])
    assert client.get("/api/v1/patients?kind=chief").get_json()["total"] == 4
    error_of(client.get("/api/v1/patients?limit=0"), 400, "limit")
    error_of(client.get("/api/v1/patients?offset=-1"), 400, "offset")
    error_of(client.get("/api/v1/patients?label=bad"), 400, "label")
    error_of(client.get("/api/v1/patients?cohort=nope"), 404)


def test_patient_detail(client):
    case = client.get("/api/v1/patients/CASE-001").get_json()
    assert [s["name"] for s in case["slides"]] == ["CASE-001-S1", "CASE-001-S2"]
    assert case["labels"] == {"TISSUE": "dense", "SITE": "site-A", "MSI": "high"}
    assert 0 < len(case["tiles"]) <= 25 and [t["rank"] for t in case["tiles"]] == list(range(1, len(case["tiles"]) + 1))
    assert sum(s["selected_tiles"] for s in case["slides"]) == len(case["tiles"])
    attention = [t["attention"] for t in case["tiles"]]
    assert attention == sorted(attention, reverse=True)
    tile = client.get(case["tiles"][0]["tile_url"])
    assert tile.status_code == 200 and tile.data.startswith(PNG)
    from PIL import Image

    assert Image.open(io.BytesIO(tile.data)).size == (224, 224)
    assert {v["kind"] for v in case["vectors"]} == {"eagle", "chief", "mean-ctranspath"}
    imported = client.get("/api/v1/patients/IMP-005").get_json()
    assert imported["slides"] == [] and imported["tiles"] == [] and imported["thumbnail_url"] is None
    error_of(client.get("/api/v1/patients/NOBODY"), 404)


def test_labels_read_add_and_upload(client, env):
    summary = {e["name"]: e for e in client.get("/api/v1/labels").get_json()}
    assert summary["TISSUE"]["values"] == {"dense": 14, "fatty": 13, "pale": 13}
    added = client.post("/api/v1/patients/IMP-003/labels", json={"name": "grade", "value": 2})
    assert added.status_code == 200 and added.get_json()["labels"]["grade"] == "2"
    assert client.get("/api/v1/patients/IMP-003/labels").get_json()["labels"]["grade"] == "2"
    error_of(client.post("/api/v1/patients/IMP-003/labels", json={"value": "x"}), 400, "name")
    error_of(client.post("/api/v1/patients/IMP-003/labels", json={"name": "grade", "value": {"a": 1}}), 400, "value")
    error_of(client.post("/api/v1/patients/NOBODY/labels", json={"name": "grade", "value": "1"}), 404)
    error_of(client.get("/api/v1/patients/NOBODY/labels"), 404)
    table = b"PATIENT,stage\nIMP-004,II\nZZ-NEW,I\n"
    report = client.post("/api/v1/labels", data={"file": (io.BytesIO(table), "../../stage.csv")}, content_type="multipart/form-data")
    assert report.status_code == 200, report.get_json()
    assert report.get_json()["unknown_patients"] == ["ZZ-NEW"] and report.get_json()["source"] == "../../stage.csv"
    assert not any(p.name.startswith("labels-") for p in (env["data"] / "uploads").iterdir())  # temp upload removed
    error_of(client.post("/api/v1/labels", data={}, content_type="multipart/form-data"), 400, "file")


def test_upload_limit_gives_413(env):
    from web import create_app

    app = create_app(service=env["service"], config={"MAX_CONTENT_LENGTH": 1000})
    client = app.test_client()
    big = client.post("/api/v1/labels", data={"file": (io.BytesIO(b"x" * 5000), "t.csv")}, content_type="multipart/form-data")
    assert "1000 bytes" in error_of(big, 413, "file")
    huge_json = client.post("/api/v1/search", data=b"{" + b" " * 3000 + b"}", content_type="application/json")
    error_of(huge_json, 413)


def test_slides_list_and_detail(client):
    listed = client.get("/api/v1/slides?limit=2").get_json()
    assert listed["total"] == 5 and len(listed["items"]) == 2
    mine = client.get("/api/v1/slides?patient=CASE-001").get_json()
    assert [s["name"] for s in mine["items"]] == ["CASE-001-S1", "CASE-001-S2"]
    assert client.get("/api/v1/slides?status=done&q=s2").get_json()["total"] == 1
    error_of(client.get("/api/v1/slides?status=sleeping"), 400, "status")
    error_of(client.get("/api/v1/slides?patient=NOBODY"), 404)
    slide_id = mine["items"][0]["id"]
    detail = client.get(f"/api/v1/slides/{slide_id}?all_tiles=1").get_json()
    assert detail["tile_um"] == 448.0 and 0 < len(detail["candidates"]) <= 25
    assert len(detail["tiles"]) == detail["n_tiles"]
    error_of(client.get("/api/v1/slides/99999"), 404)
    error_of(client.get(f"/api/v1/slides/{slide_id}?all_tiles=yes"), 400, "all_tiles")


def test_thumbnails_and_tiles(client, env):
    slide_id = client.get("/api/v1/slides?patient=CASE-002").get_json()["items"][0]["id"]
    for query in ("", "?size=256&boxes=none", "?size=160&boxes=selected"):
        image = client.get(f"/api/v1/slides/{slide_id}/thumbnail.png{query}")
        assert image.status_code == 200 and image.mimetype == "image/png" and image.data.startswith(PNG)
    assert len(list((env["data"] / "cache" / "thumbnails").glob(f"{slide_id}-*.png"))) == 3
    patient = client.get("/api/v1/patients/CASE-001/thumbnail.png?size=320")
    assert patient.status_code == 200 and patient.data.startswith(PNG)
    error_of(client.get("/api/v1/patients/IMP-001/thumbnail.png"), 404)
    error_of(client.get("/api/v1/patients/NOBODY/thumbnail.png"), 404)
    error_of(client.get(f"/api/v1/slides/{slide_id}/thumbnail.png?size=4000"), 400, "size")
    error_of(client.get(f"/api/v1/slides/{slide_id}/thumbnail.png?size=big"), 400, "size")
    error_of(client.get(f"/api/v1/slides/{slide_id}/thumbnail.png?boxes=all"), 400, "boxes")
    error_of(client.get("/api/v1/slides/99999/thumbnail.png"), 404)
    first = client.get(f"/api/v1/slides/{slide_id}").get_json()["candidates"][0]
    tile = client.get(f"/api/v1/slides/{slide_id}/tile.png?x_um={first['x_um'] + 0.4}&y_um={first['y_um']}")
    assert tile.status_code == 200 and tile.data.startswith(PNG)
    error_of(client.get(f"/api/v1/slides/{slide_id}/tile.png?x_um=3&y_um=5"), 404)
    error_of(client.get(f"/api/v1/slides/{slide_id}/tile.png?x_um=nan&y_um=5"), 400, "x_um")
    error_of(client.get(f"/api/v1/slides/{slide_id}/tile.png?y_um=5"), 400, "x_um")
    error_of(client.get("/api/v1/slides/99999/tile.png?x_um=0&y_um=0"), 404)


def test_a_moved_slide_file_gives_404_not_500(client, env, tmp_path):
    svc = env["service"]
    from eagle_index.store.models import Slide

    def _tx(session):
        row = session.query(Slide).filter(Slide.name == "CASE-004-S1").one()
        original, row.path = row.path, str(tmp_path / "gone.tiff")
        slide_id = row.id
        return original, slide_id

    original, slide_id = svc.catalog.write(_tx)
    try:
        error_of(client.get(f"/api/v1/slides/{slide_id}/thumbnail.png?size=160"), 404)
        detail = client.get("/api/v1/patients/CASE-004").get_json()
        assert detail["slides"][0]["has_file"] is False and detail["slides"][0]["thumbnail_url"] is None
    finally:
        def _restore(session):
            session.query(Slide).filter(Slide.id == slide_id).one().path = original

        svc.catalog.write(_restore)


# -- jobs: server-side paths only inside the roots ------------------------------------------------------
def test_jobs_accept_only_paths_inside_the_roots(client, env):
    inbox, outside = env["inbox"], env["outside"]
    source = env["slides"] / "CASE-002-S1.tiff"
    shutil.copy(source, inbox / "TCGA-AB-0001-01Z-00-DX1.tiff")
    shutil.copy(source, outside / "secret.tiff")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "link.tiff").symlink_to(outside / "secret.tiff")
    (inbox / "dirlink").symlink_to(outside, target_is_directory=True)

    queued = client.post("/api/v1/jobs", json={"paths": [str(inbox / "TCGA-AB-0001-01Z-00-DX1.tiff")]})
    assert queued.status_code == 202
    job = queued.get_json()["jobs"][0]
    assert job["state"] in ("queued", "skipped") and job["file"] == str((inbox / "TCGA-AB-0001-01Z-00-DX1.tiff").resolve())
    folder = client.post("/api/v1/jobs", json={"paths": [str(inbox / "sub")]}).get_json()
    assert folder["jobs"] == [] and [Path(r["file"]).name for r in folder["refused"]] == ["link.tiff"]
    for bad in (str(outside / "secret.tiff"), str(inbox / ".." / outside.name / "secret.tiff"), str(inbox / "sub" / "link.tiff"),
                str(inbox / "dirlink" / "secret.tiff"), "TCGA-AB-0001-01Z-00-DX1.tiff", "/etc/passwd", "~/secret.tiff"):
        assert "outside the folders" in error_of(client.post("/api/v1/jobs", json={"paths": [bad]}), 400, "paths")
    for bad in ("", str(inbox) + "\x00.tiff", "x" * 5000):
        error_of(client.post("/api/v1/jobs", json={"paths": [bad]}), 400, "paths")
    error_of(client.post("/api/v1/jobs", json={"paths": []}), 400, "paths")
    error_of(client.post("/api/v1/jobs", json={"paths": "x"}), 400, "paths")
    error_of(client.post("/api/v1/jobs", json={"paths": [str(inbox)], "patient": 3}), 400, "patient")
    error_of(client.post("/api/v1/jobs", json={"paths": [str(inbox / "missing.tiff")]}), 400)
    assert not any(j["file"].endswith("secret.tiff") for j in client.get("/api/v1/jobs").get_json())


def test_jobs_list_and_retry(client, env):
    listed = client.get("/api/v1/jobs?limit=5").get_json()
    assert isinstance(listed, list)
    error_of(client.get("/api/v1/jobs?state=sleeping"), 400, "state")
    error_of(client.get("/api/v1/jobs?limit=x"), 400, "limit")
    svc = env["service"]
    state, job_id = svc.jobs.enqueue("fp-broken", str(env["inbox"] / "broken.tiff"), "TCGA-AB-0002")
    claimed = svc.jobs.claim()
    assert claimed is not None
    svc.jobs.fail(claimed.id, "cannot open", max_attempts=1, backoff_s=0)
    assert client.get("/api/v1/jobs?state=failed").get_json()[0]["error"] == "cannot open"
    assert client.post(f"/api/v1/jobs/{claimed.id}/retry").get_json() == {"job": claimed.id, "state": "queued"}
    error_of(client.post(f"/api/v1/jobs/{claimed.id}/retry"), 409)
    error_of(client.post("/api/v1/jobs/999999/retry"), 404)


def test_unexpected_errors_never_leak_a_traceback(env, monkeypatch):
    from web import create_app

    class Broken:
        settings = env["service"].settings

        def stats(self):
            raise RuntimeError("secret internals at /srv/data")

    client = create_app(service=Broken()).test_client()
    response = client.get("/api/v1/stats")
    message = error_of(response, 500)
    assert "secret" not in message and "RuntimeError" not in response.get_data(as_text=True)


def test_slide_viewer_routes(client):
    """The viewer's routes in one pass (their behaviour in depth: test_web_viewer.py)."""
    slide = client.get("/api/v1/patients/CASE-002").get_json()["slides"][0]
    assert b"<Image" in client.get(f"/api/v1/slides/{slide['id']}/dzi").data
    overlays = client.get(f"/api/v1/slides/{slide['id']}/overlays").get_json()
    assert len(overlays["tissue"]["x_um"]) == slide["n_tiles"]
    top = overlays["dzi"]["levels"] - 1
    assert client.get(f"/api/v1/slides/{slide['id']}/tiles/{top}/0_0.jpeg").mimetype == "image/jpeg"
    error_of(client.get(f"/api/v1/slides/{slide['id']}/tiles/{top + 1}/0_0.jpeg"), 404)
    assert client.get("/api/v1/patients/CASE-002/viewer").get_json()["slides"][0]["viewable"] is True
    assert client.get("/api/v1/compare?query=CASE-002&hit=CASE-001&pairs=2").get_json()["pairs"][0]["rank"] == 1


# -- region search ----------------------------------------------------------------------------------
def test_region_search_json_and_image(client, env):
    """POST /search/tiles: a stored tile (patient + rank, or slide id + point) in JSON, an image as multipart."""
    detail = client.get("/api/v1/patients/CASE-001").get_json()
    tile = detail["tiles"][0]
    by_rank = client.post("/api/v1/search/tiles", json={"patient": "CASE-001", "tile": 1, "k": 6, "per_patient": 2})
    assert by_rank.status_code == 200, by_rank.get_json()
    data = by_rank.get_json()
    assert set(data) >= {"query", "patients"} and data["query"]["patient"] == "CASE-001"
    assert (data["query"]["x_um"], data["query"]["y_um"]) == (tile["x_um"], tile["y_um"])
    assert "CASE-001" not in [p["patient"] for p in data["patients"]]
    assert all(set(t) >= {"slide", "x_um", "y_um", "score", "slide_id"} for p in data["patients"] for t in p["tiles"])
    assert sum(len(p["tiles"]) for p in data["patients"]) == 6 and all(len(p["tiles"]) <= 2 for p in data["patients"])
    # the same tile by slide id and a point inside it: the same answer
    by_point = client.post("/api/v1/search/tiles", json={"slide_id": tile["slide_id"], "x_um": tile["x_um"] + 5, "y_um": tile["y_um"] + 5,
                                                          "k": 6, "per_patient": 2}).get_json()
    assert by_point["patients"] == data["patients"]
    # each returned tile's image is served
    first = data["patients"][0]["tiles"][0]
    image = client.get(f"/api/v1/slides/{first['slide_id']}/tile.png?x_um={first['x_um']}&y_um={first['y_um']}")
    assert image.status_code == 200 and image.data.startswith(PNG)
    # an image upload (the tile itself as a PNG at 2 µm/px) finds that tile's patient first
    png = client.get(tile["tile_url"]).data
    found = client.post("/api/v1/search/tiles", data={"file": (io.BytesIO(png), "region.png"), "mpp": "2.0", "k": "3"},
                        content_type="multipart/form-data")
    assert found.status_code == 200, found.get_json()
    result = found.get_json()
    assert result["query"]["image"] == "region.png" and result["patients"][0]["patient"] == "CASE-001"
    assert result["patients"][0]["score"] > 0.99
    # bad input: one error shape naming the field
    # in the form's words, naming the user's file (never the server's temp path or a CLI flag; issue 21 item 5)
    message = error_of(client.post("/api/v1/search/tiles", data={"file": (io.BytesIO(png), "r.png")},
                                   content_type="multipart/form-data"), 400, "mpp")
    assert message.startswith("r.png: ") and "“µm per pixel”" in message and "--" not in message and "/" not in message.split(":")[0]
    message = error_of(client.post("/api/v1/search/tiles", data={"file": (io.BytesIO(png), "r.png"), "mpp": "1.0"},
                                   content_type="multipart/form-data"), 400, "file")
    assert message.startswith("r.png: ") and "minimum is 448" in message
    error_of(client.post("/api/v1/search/tiles", data={"file": (io.BytesIO(b"x"), "r.exe")}, content_type="multipart/form-data"), 400, "file")
    error_of(client.post("/api/v1/search/tiles", json={"k": 5}), 400, "patient")
    error_of(client.post("/api/v1/search/tiles", json={"patient": "CASE-001", "tile": 1, "k": 0}), 400, "k")
    error_of(client.post("/api/v1/search/tiles", json={"slide_id": tile["slide_id"], "box": [0, 0, "x", 1]}), 400, "box")
    assert "unknown patient" in error_of(client.post("/api/v1/search/tiles", json={"patient": "NOPE", "tile": 1}), 404)
