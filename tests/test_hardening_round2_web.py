"""Issue 24, web side (items 6, 7, 8, 9 and three of item 11): each attack first, then what must happen.

6. the throttle never locks out a correct token (the owner shares 127.0.0.1 with every local user);
7. upload tiles and thumbnails live in the one capped cache and leave it with their upload;
8. a slide file replaced after it was embedded is a 409 naming the slide, everywhere, even when
   the cache still holds its old images;
9. start-up cleanup (eagle_index/housekeeping.py): temp files of killed runs everywhere, aged
   exports and stray uploads, never a file newer than the threshold nor an upload the catalog names;
11. a 5,000-character upload id, a token with a newline, the full slide path in the viewer's 409.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_web_fixtures import PNG, TILE_UM, archive_copy, error_of

TOKEN = "round-two-token-for-tests"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from eagle_index.config import Settings, ViewerSettings
    from eagle_index.service import EagleService

    settings = Settings(data_dir=archive_copy(tmp_path_factory, "round2-web"), models="tiny", device="cpu",
                        viewer=ViewerSettings(cache_mb=1))  # a 1 MiB cap: a few dozen tiles pass it
    with EagleService(settings) as svc:
        yield svc


def _app(service, **owner):
    from web import create_app

    return create_app(service=service, owner={"role": "serve", **owner})


def _cache_files(service) -> list[Path]:
    return [p for p in (service.settings.data_dir / "cache").rglob("*") if p.is_file()]


# -- 6. the throttle and the owner's token -------------------------------------------------------------
def test_a_correct_token_is_never_throttled(service):
    app = _app(service, token=TOKEN)
    app.config.update(EAGLE_AUTH_FAILURES=5, EAGLE_AUTH_WINDOW=60)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/v1/stats", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert error_of(client.get("/api/v1/stats", headers={"Authorization": "Bearer guess"}), 429)
    assert error_of(client.get("/api/v1/stats"), 429)  # no credentials at all: a failure, throttled too
    # the owner (same address) with the right token: never throttled, and it does not reset the failures
    for _ in range(3):
        assert client.get("/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert error_of(client.get("/api/v1/stats", headers={"Authorization": "Bearer guess"}), 429)

    login_app = _app(service, token=TOKEN)
    login_app.config.update(EAGLE_AUTH_FAILURES=3, EAGLE_AUTH_WINDOW=60)
    browser = login_app.test_client()
    import re

    csrf = re.search(r'name="csrf-token" content="([^"]+)"', browser.get("/login").get_data(as_text=True)).group(1)
    codes = [browser.post("/login", data={"token": f"guess-{i}", "csrf_token": csrf}).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    logged_in = browser.post("/login", data={"token": TOKEN, "csrf_token": csrf})
    assert logged_in.status_code == 302  # the right token logs in while the address is throttled
    assert browser.get("/api/v1/stats").status_code == 200


def _wait_for_url(data: Path, proc, log: Path, timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while True:
        info = data / "owner.json"
        if info.exists():
            try:
                url = json.loads(info.read_text()).get("url")
            except ValueError:
                url = None
            if url:
                return url
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)


def test_cli_stats_through_a_server_after_failed_guesses_from_the_same_address(tmp_path):
    data = tmp_path / "data"
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "EAGLE_INDEX_TOKEN": TOKEN, "EAGLE_INDEX_LOG": "WARNING", "PYTHONPATH": str(ROOT)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "serve", "--port", "0", "--models", "tiny", "--device",
                                 "cpu", "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = _wait_for_url(data, proc, log_path)
            host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
            statuses = []
            for i in range(12):  # another local user guessing from 127.0.0.1
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                connection.request("GET", "/api/v1/stats", headers={"Authorization": f"Bearer wrong-guess-{i}"})
                statuses.append(connection.getresponse().status)
                connection.close()
            assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
            done = run_cli("stats", "--json", "--data-dir", data, env={"EAGLE_INDEX_TOKEN": TOKEN}, check=False)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["patients"] == 0
        finally:
            proc.terminate()
            proc.wait(60)


# -- 11. tokens with a line break ----------------------------------------------------------------------
@pytest.mark.parametrize("token", ["a-long-enough-token\nX-Injected: 1", "a-long-enough-token\r", "a-long-enough\ttoken!",
                                   "a-long-enough-token\x1b[2J", "a-long-enough-tökén-here"])
def test_a_token_with_a_line_break_or_control_character_is_refused(token, monkeypatch):
    from eagle_index.config import Settings
    from eagle_index.errors import InputError
    from web.security import check_token

    monkeypatch.setenv("EAGLE_INDEX_TOKEN", token)
    with pytest.raises(InputError) as caught:
        Settings.load()
    message = str(caught.value)
    assert "EAGLE_INDEX_TOKEN" in message and "\n" not in message and token not in message  # never echoes the secret
    with pytest.raises(ValueError) as refused:
        check_token(token)
    assert "EAGLE_INDEX_TOKEN" in str(refused.value) and token not in str(refused.value)
    assert check_token("a-long-enough-token-with no-controls") == "a-long-enough-token-with no-controls"


def test_a_command_with_a_line_break_in_its_token_says_so_in_one_line(tmp_path):
    done = run_cli("stats", "--data-dir", tmp_path / "data", env={"EAGLE_INDEX_TOKEN": "a-long-enough-token\nsecond-line"},
                   check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "EAGLE_INDEX_TOKEN" in done.stderr
    assert "second-line" not in done.stderr


# -- 7. the upload tile cache ----------------------------------------------------------------------------
def _store_upload(service, source: Path) -> str:
    """An uploaded slide, stored as POST /search/upload stores one (DATA/uploads/<32 hex>.<suffix>)."""
    import uuid

    upload_id = uuid.uuid4().hex
    folder = service.settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / f"{upload_id}{source.suffix}")
    return upload_id


@pytest.fixture
def small_cap(service):
    """The synthetic tiles are ~4 kB PNGs: a 1 MiB cap (EAGLE_INDEX_TILE_CACHE_MB=1, the smallest) would need
    hundreds of requests, so this test's cache holds 40 kB (same cache object, same code, a smaller number)."""
    cache = service.viewer.cache
    assert cache.cap == service.settings.viewer.cache_mb << 20
    cache.cap = 40_000
    cache.evict(target=0)  # start empty: only this test's images count
    yield cache.cap
    cache.cap = service.settings.viewer.cache_mb << 20


def test_upload_tiles_share_the_one_capped_cache_and_leave_with_their_upload(service, tmp_path_factory, small_cap):
    slides = tmp_path_factory.getbasetemp() / "web-archive" / "slides"
    client = _app(service).test_client()
    upload_id = _store_upload(service, slides / "CASE-001-S1.tiff")
    before = len(_cache_files(service))
    assert client.get(f"/api/v1/uploads/{upload_id}/thumbnail.png?size=160").data.startswith(PNG)
    served = 0
    for i in range(40):  # one PNG per whole-µm coordinate: 40 distinct tiles, several times the cap
        x, y = TILE_UM + 7 * i, TILE_UM + 3 * (i % 20)
        response = client.get(f"/api/v1/uploads/{upload_id}/tile.png?x_um={x}&y_um={y}")
        assert response.status_code == 200 and response.data.startswith(PNG)
        served += len(response.data)
        assert sum(p.stat().st_size for p in _cache_files(service)) <= small_cap
    assert served > 2 * small_cap and len(_cache_files(service)) < before + 40
    # the upload goes (the server keeps only the latest few): its images go with it and are never served again
    (service.settings.data_dir / "uploads" / f"{upload_id}.tiff").unlink()
    assert error_of(client.get(f"/api/v1/uploads/{upload_id}/tile.png?x_um={TILE_UM}&y_um={TILE_UM}"), 404)
    assert error_of(client.get(f"/api/v1/uploads/{upload_id}/thumbnail.png?size=256"), 404)
    assert not [p for p in _cache_files(service) if upload_id in p.name or upload_id in p.parent.name]


def test_uploads_gone_meanwhile_leave_the_cache_when_the_next_image_is_cached(service, tmp_path_factory):
    slides = tmp_path_factory.getbasetemp() / "web-archive" / "slides"
    client = _app(service).test_client()
    first, second = (_store_upload(service, slides / "CASE-004-S1.tiff") for _ in range(2))
    assert client.get(f"/api/v1/uploads/{first}/thumbnail.png?size=160").status_code == 200
    assert client.get(f"/api/v1/uploads/{first}/tile.png?x_um={TILE_UM}&y_um={TILE_UM}").status_code == 200
    assert [p for p in _cache_files(service) if first in str(p)]
    (service.settings.data_dir / "uploads" / f"{first}.tiff").unlink()  # e.g. pruned by the next upload
    assert client.get(f"/api/v1/uploads/{second}/thumbnail.png?size=160").status_code == 200
    assert not [p for p in _cache_files(service) if first in str(p)]


def test_a_huge_upload_id_is_a_404_naming_the_problem(service):
    client = _app(service).test_client()
    for bad in ("a" * 5000, "f" * 300, "A" * 32, "g" * 32, "0" * 31):
        for path in (f"/api/v1/uploads/{bad}/thumbnail.png", f"/api/v1/uploads/{bad}/tile.png?x_um=0&y_um=0"):
            message = error_of(client.get(path), 404)
            assert "upload id" in message and "32" in message and len(message) < 200, message


# -- 8. a slide file replaced after it was embedded -------------------------------------------------------
_SEEDS = __import__("itertools").count()


@pytest.fixture
def replaceable(service, tmp_path):
    """A catalogued, embedded slide whose file the test may replace: a private copy of CASE-002-S1's geometry
    (another seed, so another fingerprint), with CASE-002-S1's artifact (the same tile grid)."""
    from eagle_index.demo import TISSUE_TYPES
    from eagle_index.fingerprint import slide_fingerprint
    from eagle_index.slides.synthetic import write_pyramidal_tiff

    seed = 4242 + next(_SEEDS)  # another content each time: the catalog's fingerprints are unique
    original = next(s for s in service.browse.list_slides(status="done", limit=50)["items"] if s["name"] == "CASE-002-S1")
    row, _ = service.browse.slide(original["id"])
    path = tmp_path / "slides" / "REPLACED-01.tiff"
    path.parent.mkdir()
    texture, palette = TISSUE_TYPES["dense"]
    cols, rows = 5, 4
    write_pyramidal_tiff(path, mpp=1.0, size_um=(cols * TILE_UM, rows * TILE_UM),
                         tissue_boxes_um=[(TILE_UM, TILE_UM, (cols - 2) * TILE_UM, (rows - 2) * TILE_UM)],
                         texture=texture, palette=palette, seed=seed)
    fingerprint = slide_fingerprint(path)

    def write(session):
        pid = service.catalog.patient_id(session, "REPLACED-PATIENT", create=True)
        return service.catalog.add_slide(session, pid, "REPLACED-01", fingerprint, path=str(path), status="done", mpp=1.0,
                                         size_bytes=path.stat().st_size, width_px=row.width_px, height_px=row.height_px,
                                         artifact_path=row.artifact_path, format="tiff")

    return {"id": service.catalog.write(write), "path": path, "bytes": path.read_bytes(), "row": row}


def _everything(client, sid: int, top: int, tile: tuple[float, float]) -> dict:
    x, y = tile
    return {
        "dzi": client.get(f"/api/v1/slides/{sid}/dzi"),
        "tile": client.get(f"/api/v1/slides/{sid}/tiles/{top}/1_1.jpeg"),
        "tile-png": client.get(f"/api/v1/slides/{sid}/tiles/{top}/1_1.png"),
        "overlays": client.get(f"/api/v1/slides/{sid}/overlays"),
        "thumbnail": client.get(f"/api/v1/slides/{sid}/thumbnail.png?size=256"),
        "thumbnail-plain": client.get(f"/api/v1/slides/{sid}/thumbnail.png?size=256&boxes=none"),
        "model-tile": client.get(f"/api/v1/slides/{sid}/tile.png?x_um={x}&y_um={y}"),
    }


def test_a_replaced_slide_file_is_a_409_everywhere_even_from_the_cache(service, replaceable):
    client = _app(service).test_client()
    sid, path = replaceable["id"], replaceable["path"]
    top = client.get(f"/api/v1/slides/{sid}/dzi").status_code == 200 and \
        int(client.get(f"/api/v1/slides/{sid}/overlays").get_json()["dzi"]["levels"]) - 1
    first = client.get(f"/api/v1/slides/{sid}").get_json()["candidates"][0]
    tile = (first["x_um"], first["y_um"])
    before = _everything(client, sid, top, tile)
    assert {k: r.status_code for k, r in before.items()} == {k: 200 for k in before}
    etag = before["tile"].headers["ETag"]

    # garbage of another size in place of the file: the cheap check (size) says so
    path.write_bytes(b"not the slide that was embedded" * 100)
    after = _everything(client, sid, top, tile)
    for what, response in after.items():
        message = error_of(response, 409)
        assert "REPLACED-01" in message and "replaced" in message, (what, message)
        assert str(path.parent) not in message, (what, message)
    assert error_of(client.get(f"/api/v1/slides/{sid}/tiles/{top}/1_1.jpeg", headers={"If-None-Match": etag}), 409)
    viewer = client.get("/api/v1/patients/REPLACED-PATIENT/viewer").get_json()
    assert [s["viewable"] for s in viewer["slides"]] == [False] and "replaced" in viewer["slides"][0]["reason"]
    error_of(client.get("/api/v1/patients/REPLACED-PATIENT/thumbnail.png"), 409)


def test_same_size_content_copied_with_its_old_mtime_is_noticed_and_a_touch_is_not(service, replaceable, monkeypatch):
    import eagle_index.fingerprint as fingerprint

    client = _app(service).test_client()
    sid, path, original = replaceable["id"], replaceable["path"], replaceable["bytes"]
    assert client.get(f"/api/v1/slides/{sid}/thumbnail.png?size=160").status_code == 200
    hashed = []
    real = fingerprint.slide_fingerprint
    monkeypatch.setattr(fingerprint, "slide_fingerprint", lambda p: hashed.append(p) or real(p))
    st = path.stat()
    changed = bytearray(original)
    changed[len(changed) // 2: len(changed) // 2 + 64] = bytes(64)  # same size, other content
    path.write_bytes(bytes(changed))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # `cp -p`: the old mtime; only the ctime moved
    for _ in range(3):
        message = error_of(client.get(f"/api/v1/slides/{sid}/thumbnail.png?size=160"), 409)
        assert "REPLACED-01" in message and "replaced" in message
        error_of(client.get(f"/api/v1/slides/{sid}/dzi"), 409)
    assert len(hashed) == 1  # hashed once for this state of the file, then remembered
    path.write_bytes(original)  # the embedded content back (a restore, a touch): viewable again
    assert client.get(f"/api/v1/slides/{sid}/thumbnail.png?size=160").status_code == 200
    assert client.get(f"/api/v1/slides/{sid}/dzi").status_code == 200
    assert len(hashed) == 2


def test_an_unopenable_slide_409_names_the_slide_not_the_server_path(service, tmp_path):
    client = _app(service).test_client()
    path = tmp_path / "deep" / "folder" / "broken-scan.tiff"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"II*\x00" + b"\x00" * 200)  # a TIFF header and nothing else

    def write(session):
        pid = service.catalog.patient_id(session, "BROKEN-PATIENT", create=True)
        return service.catalog.add_slide(session, pid, "broken-scan", f"test-broken-{path.stat().st_size}", path=str(path),
                                         status="registered", mpp=1.0)

    sid = service.catalog.write(write)
    for url in (f"/api/v1/slides/{sid}/dzi", f"/api/v1/slides/{sid}/tiles/0/0_0.jpeg", f"/api/v1/slides/{sid}/overlays",
                f"/api/v1/slides/{sid}/thumbnail.png?boxes=none"):
        message = error_of(client.get(url), 409)
        assert "broken-scan" in message and str(tmp_path) not in message and "/deep/folder" not in message, (url, message)


# -- 9. start-up cleanup -------------------------------------------------------------------------------
def test_startup_cleanup_removes_aged_leftovers_only(tmp_path, monkeypatch):
    from eagle_index import housekeeping, server
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    data = tmp_path / "data"
    settings = Settings(data_dir=data, models="tiny", device="cpu")
    kept_upload = data / "uploads" / ("c" * 32 + ".tiff")  # an upload a slide of the catalog points to

    with EagleService(settings) as service:
        def write(session):
            pid = service.catalog.patient_id(session, "UPLOADED", create=True)
            service.catalog.add_slide(session, pid, "kept", "test-kept", path=str(kept_upload), status="done")

        service.catalog.write(write)
    old = time.time() - 3600
    stale = [data / ".owner.json.Ab3dE6gh.tmp", data / "index" / ".eagle-x.faiss.k2j3h4g5.tmp",
             data / "artifacts" / "ab" / ".ab.h5.zx9_cv8b.tmp", data / "cache" / "dzi" / "3" / "abc" / ".1_1_q80.jpeg.q1w2e3r4.tmp",
             data / "cache" / "thumbnails" / ".7-ab-256-plain.png.a1s2d3f4.tmp", data / "cache" / "tiles" / ".upload-x.png.z1x2c3v4.tmp",
             data / "cache" / "exports" / ("e" * 32 + ".csv"), data / "cache" / "exports" / ("f" * 32 + ".h5"),
             data / "cache" / "thumbnails" / ("upload-%s-256.png" % ("1" * 32)),  # the old layout's upload images
             data / "cache" / "tiles" / ("upload-%s-448-455.png" % ("1" * 32)),
             data / "cache" / "uploads" / ("2" * 32) / "tile-448-448.png",  # an image of an upload that is gone
             data / "cache" / "uploads" / ("a" * 32) / "thumbnail-256.png",  # of the stray upload removed now
             data / "uploads" / ("a" * 32 + ".tiff"), data / "uploads" / "labels-k3j4h5g6.csv",
             data / "uploads" / (".%s.tiff.p0o9i8u7.tmp" % ("b" * 32))]
    fresh = [data / ".owner.json.Fr3shNew.tmp", data / "cache" / "exports" / ("9" * 32 + ".csv"),
             data / "uploads" / ("d" * 32 + ".png"), data / "cache" / "dzi" / "3" / "abc" / ".2_2_q80.jpeg.n3wn3wn3.tmp"]
    kept = [kept_upload, data / "cache" / "dzi" / "3" / "abc" / "10" / "1_1_q80.jpeg", data / "cache" / "umap" / "c-eagle-1.npz",
            data / "cache" / "thumbnails" / "7-0123456789abcdef-256-plain.png", data / "cache" / "tiles" / "7-0123456789abcdef-t3.png",
            data / "cache" / "uploads" / ("c" * 32) / "tile-448-448.png",  # the kept upload's image
            data / "index" / "notes.tmp", data / "owner.json.tmp", data / "uploads" / "README.txt"]
    for path in stale + fresh + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
        if path not in fresh:
            os.utime(path, (old, old))
    removed = housekeeping.remove_stale_temp_files(settings)
    assert sorted(map(str, removed)) == sorted(map(str, stale))
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in fresh + kept)
    # the threshold is a setting; the owner runs this module's function at start
    monkeypatch.setenv("EAGLE_INDEX_STALE_FILE_SECONDS", "7200")
    assert Settings.load(data_dir=data).stale_file_seconds == 7200
    monkeypatch.setenv("EAGLE_INDEX_STALE_FILE_SECONDS", "soon")
    from eagle_index.errors import InputError

    with pytest.raises(InputError, match="EAGLE_INDEX_STALE_FILE_SECONDS='soon'"):
        Settings.load(data_dir=data)
    for path in fresh:
        os.utime(path, (time.time() - 3000, time.time() - 3000))
    assert housekeeping.remove_stale_temp_files(settings.model_copy(update={"stale_file_seconds": 7200.0})) == []
    assert server.remove_stale_temp_files is housekeeping.remove_stale_temp_files


def test_leftovers_too_fresh_at_start_go_in_the_second_pass_never_the_owners_own(tmp_path):
    """A supervisor restarting the owner right after a kill during publication: `.owner.json.*.tmp` is too fresh
    for the start-up pass; the second pass (once the threshold has passed) removes it, and only files that
    predate the start, never the new owner's own temp files."""
    import threading

    from eagle_index import housekeeping
    from eagle_index.config import Settings

    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    started = time.time()
    killed = data / ".owner.json.k2j3h4g5.tmp"
    own = data / "index" / ".eagle-x.faiss.a1b2c3d4.tmp"
    upload = data / "uploads" / ("a" * 32 + ".tiff")
    for path in (killed, own, upload):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.utime(killed, (started - 5, started - 5))  # written by the killed owner 5 s before this one started
    os.utime(upload, (started - 5, started - 5))
    os.utime(own, (started + 30, started + 30))  # this owner's, written after its start
    assert housekeeping.remove_stale_temp_files(settings, recheck=True) == []  # all too fresh now
    assert any(t.name == "eagle-index-housekeeping" and t.daemon for t in threading.enumerate())
    assert housekeeping._second_pass(settings, started, None) == [killed]  # catalog unreadable at start: uploads stay
    assert sorted(housekeeping._second_pass(settings, started, set())) == sorted([upload])
    assert own.exists()
