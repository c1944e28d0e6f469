"""The slide viewer's API: Deep Zoom descriptor and tiles from real slide files (OpenSlide), the disk
cache (atomic, capped, LRU), ETags, moved/unreadable files, plain images, overlays, the compare
view, traversal attempts in every parameter, and the access token."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from test_web_fixtures import api_env, error_of

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "openslide-fixtures"
TOKEN = "viewer-token-for-tests"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from api_env(tmp_path_factory, "web-viewer")


@pytest.fixture(scope="module")
def client(env):
    return env["client"]


def _slide_id(client, patient: str, index: int = 0) -> int:
    return client.get(f"/api/v1/patients/{patient}").get_json()["slides"][index]["id"]


def _register(service, path: Path, name: str, patient: str = "VIEWER-EXTRA", mpp: float | None = 1.0) -> int:
    """A slide row pointing to `path` (what ingest records), without embedding it."""
    def write(session):
        pid = service.catalog.patient_id(session, patient, create=True)
        return service.catalog.add_slide(session, pid, name, f"test-{name}-{path.stat().st_size}", path=str(path),
                                         status="registered", mpp=mpp)

    return service.catalog.write(write)


def _image(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data))


# -- Deep Zoom ---------------------------------------------------------------------------------------
def test_dzi_descriptor_matches_the_slide(client, env):
    import openslide

    sid = _slide_id(client, "CASE-001")
    response = client.get(f"/api/v1/slides/{sid}/dzi")
    assert response.status_code == 200 and response.mimetype == "application/xml"
    root = ET.fromstring(response.data)
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    with openslide.OpenSlide(str(env["slides"] / "CASE-001-S1.tiff")) as slide:
        assert (int(size.get("Width")), int(size.get("Height"))) == slide.dimensions
    assert root.get("TileSize") == "254" and root.get("Overlap") == "1" and root.get("Format") == "jpeg"
    assert ET.fromstring(client.get(f"/api/v1/slides/{sid}/dzi?format=png").data).get("Format") == "png"
    error_of(client.get(f"/api/v1/slides/{sid}/dzi?format=gif"), 400, "format")
    error_of(client.get("/api/v1/slides/999999/dzi"), 404)


def test_tiles_are_the_deep_zoom_generators_pixels_cached_with_an_etag(client, env):
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    sid = _slide_id(client, "CASE-001")
    with openslide.OpenSlide(str(env["slides"] / "CASE-001-S1.tiff")) as slide:
        generator = DeepZoomGenerator(slide, 254, 1, limit_bounds=False)
        top = generator.level_count - 1
        expected = np.asarray(generator.get_tile(top, (2, 2)).convert("RGB"))
    png = client.get(f"/api/v1/slides/{sid}/tiles/{top}/2_2.png")
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert np.array_equal(np.asarray(_image(png.data).convert("RGB")), expected)
    assert expected.std() > 5  # tissue, not blank glass

    jpeg = client.get(f"/api/v1/slides/{sid}/tiles/{top}/2_2.jpeg")
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg" and _image(jpeg.data).format == "JPEG"
    assert np.abs(np.asarray(_image(jpeg.data)).astype(int) - expected).mean() < 8
    etag = jpeg.headers["ETag"]
    assert etag.startswith('"') and "max-age" in jpeg.headers["Cache-Control"]
    cached = list((env["data"] / "cache" / "dzi" / str(sid)).rglob(f"{top}/2_2_q80.jpeg"))
    assert len(cached) == 1 and cached[0].read_bytes() == jpeg.data
    assert not list((env["data"] / "cache" / "dzi").rglob(".*.tmp"))  # atomic.py's temp names
    again = client.get(f"/api/v1/slides/{sid}/tiles/{top}/2_2.jpeg")
    assert again.data == jpeg.data and again.headers["ETag"] == etag
    unchanged = client.get(f"/api/v1/slides/{sid}/tiles/{top}/2_2.jpeg", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.data == b"" and unchanged.headers["ETag"] == etag
    other = client.get(f"/api/v1/slides/{sid}/tiles/{top}/2_2.jpeg", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.data == jpeg.data
    # the lowest level is one pixel
    assert _image(client.get(f"/api/v1/slides/{sid}/tiles/0/0_0.png").data).size == (1, 1)


def test_out_of_range_addresses_are_404(client):
    sid = _slide_id(client, "CASE-001")
    levels = int(client.get(f"/api/v1/slides/{sid}/overlays").get_json()["dzi"]["levels"])
    top = levels - 1
    cols = client.get(f"/api/v1/slides/{sid}/overlays").get_json()["dzi"]["width"] // 254 + 1
    for path in (f"{levels}/0_0.jpeg", f"{top}/{cols}_0.jpeg", f"{top}/0_999.jpeg", f"{top}/0_0.gif", f"{top}/0_0.JPEG",
                 "99999999999999999999/0_0.jpeg", f"{top}/99999999999999999999_0.png"):
        message = error_of(client.get(f"/api/v1/slides/{sid}/tiles/{path}"), 404)
        assert "Traceback" not in message
    error_of(client.get("/api/v1/slides/99999999999999999999/tiles/0/0_0.jpeg"), 404)
    error_of(client.get("/api/v1/slides/0/tiles/0/0_0.jpeg"), 404)


TRAVERSAL = ["..", "../..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2f", "/etc/passwd", "..\\..\\windows", "%00", "-1",
             "1.5", "~root", "....//....//etc", "%252e%252e%252f"]


def test_traversal_strings_in_every_parameter_are_refused(client, env):
    sid = _slide_id(client, "CASE-001")
    good = {"slide_id": str(sid), "level": "3", "col": "0", "row": "0", "fmt": "jpeg"}
    assert client.get("/api/v1/slides/{slide_id}/tiles/{level}/{col}_{row}.{fmt}".format(**good)).status_code == 200
    templates = ["/api/v1/slides/{slide_id}/tiles/{level}/{col}_{row}.{fmt}", "/api/v1/slides/{slide_id}/dzi",
                 "/api/v1/slides/{slide_id}/overlays"]
    tried = 0
    for template in templates:
        for name in [n for n in good if "{" + n + "}" in template]:
            for bad in TRAVERSAL:
                url = template.format(**{**good, name: bad})
                response = client.get(url)
                tried += 1
                assert response.status_code in (400, 404), (url, response.status_code)
                assert response.get_json()["error"]["status"] == response.status_code
                assert b"root:" not in response.data and b"Traceback" not in response.data
    for bad in TRAVERSAL:  # query parameters: format is enumerated, nothing takes a path
        error_of(client.get(f"/api/v1/slides/{sid}/dzi?format={bad}"), 400, "format")
        assert client.get(f"/api/v1/slides/{sid}/dzi?path={bad}&file={bad}").status_code == 200
        assert client.get(f"/api/v1/compare?query={bad}&hit=CASE-001").status_code == 404
        assert client.get(f"/api/v1/patients/{bad}/viewer").status_code == 404
    assert tried >= len(TRAVERSAL) * 7


def test_moved_unreadable_and_plain_image_slides(client, env, tmp_path):
    from eagle_index.slides.synthetic import write_image_slide

    service = env["service"]
    source = env["slides"] / "CASE-002-S1.tiff"
    copy = tmp_path / "moving.tiff"
    shutil.copy(source, copy)
    sid = _register(service, copy, "moving.tiff")
    assert client.get(f"/api/v1/slides/{sid}/tiles/5/0_0.jpeg").status_code == 200
    copy.rename(tmp_path / "elsewhere.tiff")
    message = error_of(client.get(f"/api/v1/slides/{sid}/dzi"), 404)
    assert "moving.tiff" in message and "moved" in message and str(tmp_path) not in message
    error_of(client.get(f"/api/v1/slides/{sid}/tiles/5/0_0.jpeg"), 404)
    copy.write_bytes(b"this is not a slide any more")  # same path, now garbage
    message = error_of(client.get(f"/api/v1/slides/{sid}/tiles/5/0_0.jpeg"), 409)
    assert "moving.tiff" in message and "cannot be opened" in message
    # a plain PNG slide
    png = write_image_slide(tmp_path / "plain.png", size=(700, 500))
    pid = _register(service, png, "plain.png")
    root = ET.fromstring(client.get(f"/api/v1/slides/{pid}/dzi").data)
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (size.get("Width"), size.get("Height")) == ("700", "500")
    tile = client.get(f"/api/v1/slides/{pid}/tiles/10/1_1.png")
    assert tile.status_code == 200 and _image(tile.data).size == (256, 247)  # rows 253..500 of 500
    # the patient page's viewer explains what it cannot show
    view = client.get("/api/v1/patients/VIEWER-EXTRA/viewer").get_json()
    by_name = {s["name"]: s for s in view["slides"]}
    assert by_name["plain.png"]["viewable"] and by_name["moving.tiff"]["viewable"]


@pytest.mark.skipif(not (SHARED / "unreadable.svs").exists(), reason="../shared/data/openslide-fixtures not present")
def test_a_slide_that_opens_but_cannot_be_read_is_409(client, env, tmp_path):
    copy = tmp_path / "unreadable.svs"
    shutil.copy(SHARED / "unreadable.svs", copy)
    sid = _register(env["service"], copy, "unreadable.svs", mpp=None)
    levels = client.get(f"/api/v1/slides/{sid}/overlays").get_json()["dzi"]["levels"]
    message = error_of(client.get(f"/api/v1/slides/{sid}/tiles/{levels - 1}/0_0.jpeg"), 409)
    assert "unreadable.svs" in message and "cannot be read" in message
    copy2 = tmp_path / "unopenable.tiff"
    shutil.copy(SHARED / "unopenable.tiff", copy2)
    bad = _register(env["service"], copy2, "unopenable.tiff", mpp=None)
    assert "cannot be opened" in error_of(client.get(f"/api/v1/slides/{bad}/dzi"), 409)


def test_concurrent_tile_requests_from_many_threads(env):
    app = env["app"]
    sid = _slide_id(env["client"], "CASE-003")
    dzi = env["client"].get(f"/api/v1/slides/{sid}/overlays").get_json()["dzi"]
    top = dzi["levels"] - 1
    addresses = [(level, c, r) for level in (top, top - 1) for c in range(3) for r in range(3)]
    results: dict[tuple, list[bytes]] = {a: [] for a in addresses}
    errors = []

    def work():
        client = app.test_client()
        for address in addresses:
            response = client.get(f"/api/v1/slides/{sid}/tiles/{address[0]}/{address[1]}_{address[2]}.png")
            if response.status_code != 200:
                errors.append((address, response.status_code))
            results[address].append(response.data)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(len(set(v)) == 1 and len(v) == 8 for v in results.values())


def test_open_slides_are_kept_in_a_bounded_lru_and_reopened_when_the_file_changes(env, tmp_path):
    from eagle_index.config import ViewerSettings
    from eagle_index.viewer import ViewerService

    real = env["service"]
    settings = real.settings.model_copy(update={"viewer": ViewerSettings(open_slides=2), "data_dir": tmp_path / "data"})
    viewer = ViewerService(settings, real.catalog, real.searcher, real.browse)
    ids = []
    for n in range(3):
        copy = tmp_path / f"lru-{n}.tiff"
        shutil.copy(env["slides"] / "CASE-004-S1.tiff", copy)
        ids.append(_register(real, copy, copy.name, patient="VIEWER-LRU"))
    first = viewer.dzi(ids[0])
    for sid in ids:
        viewer.tile(sid, first.levels - 1, 0, 0)
    assert list(viewer._open) == ids[1:]  # the least recently used one was dropped
    before = viewer.tile(ids[2], first.levels - 1, 1, 1)
    generator = viewer._open[ids[2]].generator
    path = tmp_path / "lru-2.tiff"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = viewer.tile(ids[2], first.levels - 1, 1, 1)
    assert after.etag != before.etag and not after.cached and viewer._open[ids[2]].generator is not generator
    assert after.data == before.data


# -- the disk cache ----------------------------------------------------------------------------------------
def test_cache_is_capped_evicts_least_recently_used_and_survives_a_full_disk(tmp_path, monkeypatch):
    from eagle_index.viewer import TileCache

    root = tmp_path / "dzi"

    def name(i: int) -> str:
        return f"1/sig/10/{i}_0_q80.jpeg"

    def on_disk() -> list[int]:
        return sorted(int(p.name.split("_")[0]) for p in root.rglob("*.jpeg"))

    cache = TileCache(root, 10_000)
    for i in range(10):
        assert cache.put(name(i), bytes([i]) * 1000)
    assert cache.get(name(0)) == bytes([0]) * 1000  # a hit makes tile 0 the most recent
    assert cache.put(name(10), bytes([10]) * 1000)  # over the cap: down to 80 %, the 3 least recently used go
    assert on_disk() == [0, *range(4, 11)]
    for i in range(11, 30):
        assert cache.put(name(i), bytes([i]) * 1000)
    assert cache.size() <= 10_000
    assert cache.get(name(29)) == bytes([29]) * 1000
    assert cache.get(name(1)) is None  # old and never read again: evicted
    assert not list(root.rglob(".*.tmp"))  # atomic.py's temp names: .NAME.XXXXXXXX.tmp

    # A restart takes the order from the files' modification times (set here, not waited for);
    # a hit refreshes the time, so the order survives.
    kept = on_disk()
    now = time.time()
    for rank, i in enumerate(reversed(kept)):  # the highest-numbered tile is the least recently used
        os.utime(root / name(i), (now - 1000 + rank, now - 1000 + rank))
    restarted = TileCache(root, 10_000)
    assert restarted.get(name(kept[-1])) is not None and (root / name(kept[-1])).stat().st_mtime > now - 100
    new_tiles = list(range(100, 100 + 11 - len(kept)))  # to 11 tiles: over the cap
    for i in new_tiles:
        assert restarted.put(name(i), bytes([i % 256]) * 1000)
    assert on_disk() == sorted([*kept[:-4], kept[-1], *new_tiles])  # kept[-2], [-3], [-4] were the oldest

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    assert cache.put("1/sig/10/99_0_q80.jpeg", b"x" * 100) is False  # logged, not raised
    assert not list(root.rglob(".*.tmp"))
    assert TileCache(tmp_path / "off", 0).put("a.jpeg", b"x") is False


def test_a_tile_is_served_when_the_cache_cannot_be_written(client, env, monkeypatch):
    sid = _slide_id(client, "CASE-004")
    top = client.get(f"/api/v1/slides/{sid}/overlays").get_json()["dzi"]["levels"] - 1

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    response = client.get(f"/api/v1/slides/{sid}/tiles/{top}/1_1.jpeg")
    assert response.status_code == 200 and _image(response.data).format == "JPEG"


# -- overlays, patient viewer, compare ----------------------------------------------------------------------
def test_overlays_give_every_tissue_tile_in_um_and_px_with_attention(client, env):
    from eagle_index.store.artifacts import read_slide_artifact

    detail = client.get("/api/v1/patients/CASE-001").get_json()
    slide = detail["slides"][0]
    data = client.get(f"/api/v1/slides/{slide['id']}/overlays").get_json()
    assert data["patient"] == "CASE-001" and data["slide"] == slide["name"]
    assert data["dzi"]["width"] == slide["width_px"] and data["dzi"]["tiles_url"] == f"/api/v1/slides/{slide['id']}/tiles/"
    tissue = data["tissue"]
    assert len(tissue["x_um"]) == slide["n_tiles"] == len(tissue["attention"]) == len(tissue["x_px"])
    np.testing.assert_allclose(np.array(tissue["x_px"]) * slide["mpp"], tissue["x_um"], atol=0.01)
    assert data["tile_px"] == pytest.approx(448.0 / slide["mpp"])
    artifact = read_slide_artifact(Path(_artifact(env, slide["id"])))
    np.testing.assert_allclose(tissue["attention"], artifact.scores, rtol=1e-6)
    assert data["attention_min"] == pytest.approx(float(artifact.scores.min()))
    assert data["attention_max"] == pytest.approx(float(artifact.scores.max()))
    mine = [t for t in detail["tiles"] if t["slide_id"] == slide["id"]]
    assert [b["rank"] for b in data["selected"]] == [t["rank"] for t in mine]
    assert [b["x_um"] for b in data["selected"]] == pytest.approx([t["x_um"] for t in mine])
    for box in data["selected"]:
        assert box["x_px"] == pytest.approx(box["x_um"] / slide["mpp"], abs=0.01) and box["size_px"] == pytest.approx(448 / slide["mpp"])


def _artifact(env, slide_id: int) -> str:
    from eagle_index.store.models import Slide

    with env["service"].catalog.transaction() as session:
        return session.get(Slide, slide_id).artifact_path


def test_patient_viewer_and_imported_only_patients(client):
    view = client.get("/api/v1/patients/CASE-001/viewer").get_json()
    assert view["note"] is None and len(view["slides"]) == 2 and all(s["viewable"] for s in view["slides"])
    detail = client.get("/api/v1/patients/CASE-001").get_json()
    assert [b["rank"] for b in view["selected"]] == [t["rank"] for t in detail["tiles"]] == list(range(1, len(detail["tiles"]) + 1))
    assert sum(s["selected_tiles"] for s in view["slides"]) == len(view["selected"])
    # one heatmap scale for all the patient's slides: the range of every slide's raw CHIEF attention
    overlays = [client.get(f"/api/v1/slides/{s['id']}/overlays").get_json() for s in view["slides"]]
    assert view["attention_range"] == pytest.approx([min(o["attention_min"] for o in overlays), max(o["attention_max"] for o in overlays)])
    imported = client.get("/api/v1/patients/IMP-003/viewer").get_json()
    assert imported["slides"] == [] and imported["selected"] == [] and "imported" in imported["note"]
    assert imported["attention_range"] is None
    error_of(client.get("/api/v1/patients/NOPE/viewer"), 404)


def test_compare_lists_the_searchers_tile_pairs_with_viewer_coordinates(client, env):
    data = client.get("/api/v1/compare?query=CASE-001&hit=CASE-002&pairs=4").get_json()
    assert data["query"]["patient"] == "CASE-001" and data["hit"]["patient"] == "CASE-002" and data["note"] is None
    expected = client.get("/api/v1/patients/CASE-001/matches/CASE-002?pairs=4").get_json()["pairs"]
    assert [p["similarity"] for p in data["pairs"]] == pytest.approx([p["similarity"] for p in expected])
    assert [p["rank"] for p in data["pairs"]] == [1, 2, 3, 4]
    for pair, ref in zip(data["pairs"], expected):
        assert (pair["query"]["slide"], pair["query"]["x_um"], pair["hit"]["slide"], pair["hit"]["y_um"]) == (
            ref["query_slide"], ref["query_x_um"], ref["hit_slide"], ref["hit_y_um"])
        assert pair["query"]["slide_id"] is not None and pair["query"]["rank"] >= 1 and pair["hit"]["x_px"] is not None
    none = client.get("/api/v1/compare?query=CASE-001&hit=IMP-001").get_json()
    assert none["pairs"] == [] and "imported" in none["note"] and none["hit"]["note"]
    error_of(client.get("/api/v1/compare?query=CASE-001"), 400, "hit")
    error_of(client.get("/api/v1/compare?query=CASE-001&hit=NOPE"), 404)
    error_of(client.get("/api/v1/compare?query=CASE-001&hit=CASE-002&pairs=99"), 400, "pairs")


# -- access --------------------------------------------------------------------------------------------------
def test_viewer_routes_need_the_token_like_the_rest_of_the_api(env):
    from web import create_app

    locked = create_app(service=env["service"], owner={"role": "serve", "token": TOKEN}).test_client()
    sid = _slide_id(env["client"], "CASE-001")
    paths = [f"/api/v1/slides/{sid}/dzi", f"/api/v1/slides/{sid}/tiles/3/0_0.jpeg", f"/api/v1/slides/{sid}/overlays",
             "/api/v1/patients/CASE-001/viewer", "/api/v1/compare?query=CASE-001&hit=CASE-002"]
    for path in paths:
        error_of(locked.get(path), 401)
        assert locked.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    cross = locked.post(f"/api/v1/slides/{sid}/tiles/3/0_0.jpeg", headers={"Origin": "http://evil.example", "Cookie": "a=b"})
    assert cross.status_code in (401, 403, 405)
    page = locked.get("/compare?query=CASE-001&hit=CASE-002")
    assert page.status_code == 302 and "/login" in page.headers["Location"]


def test_viewer_settings_come_from_the_environment(monkeypatch):
    from eagle_index.config import Settings
    from eagle_index.errors import InputError

    monkeypatch.setenv("EAGLE_INDEX_TILE_QUALITY", "55")
    monkeypatch.setenv("EAGLE_INDEX_TILE_CACHE_MB", "7")
    settings = Settings.load()
    assert settings.viewer.jpeg_quality == 55 and settings.viewer.cache_mb == 7
    monkeypatch.setenv("EAGLE_INDEX_TILE_QUALITY", "500")
    with pytest.raises(InputError, match="EAGLE_INDEX_TILE_QUALITY='500'"):
        Settings.load()


# -- OpenSeadragon: from npm by make, not committed ---------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "web" / "static" / "vendor" / "openseadragon"


def test_openseadragon_is_pinned_built_by_make_and_ignored_by_git():
    import json
    import re
    import subprocess

    package = json.loads((ROOT / "web" / "frontend" / "package.json").read_text())
    lock = json.loads((ROOT / "web" / "frontend" / "package-lock.json").read_text())
    version = package["dependencies"]["openseadragon"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "pin an exact version"
    locked = lock["packages"]["node_modules/openseadragon"]
    assert locked["version"] == version and locked["integrity"].startswith("sha512-") and locked["license"] == "BSD-3-Clause"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install: .*\bfrontend\b", makefile, re.M) and "npm ci" in makefile
    assert re.search(r"^test: install\b", makefile, re.M) and re.search(r"^demo: install\b", makefile, re.M)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "static/vendor/openseadragon/*.js" in pyproject and "static/vendor/openseadragon/images/*.png" in pyproject
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0:
        return  # not a git checkout (an unpacked sdist): nothing more to check
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "web/static/vendor/openseadragon/openseadragon.min.js"])
    assert ignored.returncode == 0, "web/static/vendor must be git-ignored"
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "web/static/vendor", "web/frontend/node_modules"],
                             capture_output=True, text=True).stdout
    assert tracked == ""
    readme = (ROOT / "README.md").read_text()
    assert f"OpenSeadragon](https://openseadragon.github.io/) {version} (BSD-3-Clause" in readme


@pytest.mark.skipif(not (VENDOR / "openseadragon.min.js").exists(), reason="OpenSeadragon not built (make install)")
def test_the_built_openseadragon_matches_the_licence_and_the_csp_hash():
    import base64
    import hashlib
    import re

    from web.security import CSP, OSD_STYLE_SHA256

    assert "Redistribution and use in source and binary forms" in (VENDOR / "LICENSE.txt").read_text()
    assert (VENDOR / "images" / "zoomin_rest.png").exists()
    code = (VENDOR / "openseadragon.min.js").read_text()
    styles = re.findall(r'textContent="(@media[^"]*)"', code)
    assert len(styles) == 1, "OpenSeadragon's injected <style> changed: update OSD_STYLE_SHA256 in web/security.py"
    assert base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode() == OSD_STYLE_SHA256
    assert f"'sha256-{OSD_STYLE_SHA256}'" in CSP


def test_pages_serve_the_vendored_viewer_and_the_compare_page(client):
    compare = client.get("/compare?query=CASE-001&hit=CASE-002")
    assert compare.status_code == 200 and b'data-query="CASE-001"' in compare.data and b"js/compare.js" in compare.data
    assert b'id="viewer"' in client.get("/patients/CASE-001").data
    if (VENDOR / "openseadragon.min.js").exists():
        script = client.get("/static/vendor/openseadragon/openseadragon.min.js")
        assert script.status_code == 200 and b"OpenSeadragon" in script.data
