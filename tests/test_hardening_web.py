"""Issue 15, web side: each attack or bad input first, then what the app must answer.

DNS rebinding (Host allow-list), weak tokens, throttled logins and unauthenticated calls,
the one upload limit through the real waitress server, failed uploads, nested JSON, one `k`
limit, label-import messages that name the user's file.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from test_web_fixtures import archive_copy, error_of, wait_task

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    with EagleService(Settings(data_dir=archive_copy(tmp_path_factory, "hardening-web"), models="tiny", device="cpu")) as svc:
        yield svc


def _app(service, settings=None, **owner):
    from web import create_app

    return create_app(settings, service=service, owner={"role": "serve", **owner})


# -- 1. DNS rebinding ----------------------------------------------------------------------------
def test_tokenless_server_refuses_foreign_host_names_on_every_route(service):
    client = _app(service, host="127.0.0.1").test_client()
    for path in ("/api/v1/patients", "/api/v1/health", "/search", "/static/css/app.css", "/login", "/api/v1/nowhere"):
        response = client.get(path, headers={"Host": "evil.example:8000"})
        assert response.status_code == 421, (path, response.status_code)
        assert response.get_json()["error"]["status"] == 421 if path.startswith("/api/") else True
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    written = client.post("/api/v1/patients/IMP-001/labels", json={"name": "x", "value": "y"},
                          headers={"Host": "evil.example:8000", "Origin": "http://evil.example:8000"})
    assert written.status_code == 421
    assert "x" not in client.get("/api/v1/patients/IMP-001/labels").get_json()["labels"]
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1", "localhost."):
        assert client.get("/api/v1/patients", headers={"Host": host}).status_code == 200, host
    for host in ("127.0.0.1.evil.example", "localhost.evil.example:8000", "[::1", "", "a b"):
        assert client.get("/api/v1/patients", headers={"Host": host}).status_code in (400, 421), host


def test_bound_name_and_configured_allow_list_are_accepted(service, monkeypatch):
    client = _app(service, host="127.0.0.5").test_client()
    assert client.get("/api/v1/stats", headers={"Host": "127.0.0.5:9000"}).status_code == 200
    assert client.get("/api/v1/stats", headers={"Host": "eagle.lab.internal:8000"}).status_code == 421
    from eagle_index.config import Settings

    monkeypatch.setenv("EAGLE_INDEX_ALLOWED_HOSTS", "eagle.lab.internal, other.example")
    settings = Settings.load(data_dir=service.settings.data_dir, models="tiny")
    assert settings.allowed_hosts == ("eagle.lab.internal", "other.example")
    client = _app(service, settings, host="127.0.0.1").test_client()
    assert client.get("/api/v1/stats", headers={"Host": "eagle.lab.internal:8000"}).status_code == 200
    assert client.get("/api/v1/stats", headers={"Host": "Other.Example"}).status_code == 200
    assert client.get("/api/v1/stats", headers={"Host": "evil.example"}).status_code == 421


def test_with_a_token_any_host_name_works_but_needs_the_token(service):
    client = _app(service, host="0.0.0.0", token=TOKEN).test_client()
    assert client.get("/api/v1/stats", headers={"Host": "eagle.lab:8000"}).status_code == 401
    assert client.get("/api/v1/stats", headers={"Host": "eagle.lab:8000", "Authorization": f"Bearer {TOKEN}"}).status_code == 200


# -- 5. weak tokens and throttling ----------------------------------------------------------------
@pytest.mark.parametrize("token", [" ", "short-token", "x" * 15 + " "])
def test_serve_refuses_a_short_token(tmp_path, token):
    env = {**os.environ, "EAGLE_INDEX_TOKEN": token}
    done = subprocess.run([sys.executable, "-m", "eagle_index", "serve", "--port", "0", "--models", "tiny",
                           "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "EAGLE_INDEX_TOKEN" in done.stderr and "16" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "owner.json").exists()


def test_failed_logins_and_unauthenticated_calls_are_throttled(service):
    app = _app(service, token=TOKEN)
    app.config.update(EAGLE_AUTH_FAILURES=5, EAGLE_AUTH_WINDOW=60)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/v1/stats", headers={"Authorization": "Bearer guess"}).status_code == 401
    throttled = client.get("/api/v1/stats", headers={"Authorization": "Bearer guess"})
    assert error_of(throttled, 429) and int(throttled.headers["Retry-After"]) > 0
    assert throttled.headers["X-Content-Type-Options"] == "nosniff"
    # the right token is never throttled (issue 24 item 6: the owner shares 127.0.0.1 with every local user)
    assert client.get("/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/v1/health").status_code == 200  # public
    other = client.get("/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200  # per client

    login_app = _app(service, token=TOKEN)
    login_app.config.update(EAGLE_AUTH_FAILURES=3, EAGLE_AUTH_WINDOW=60)
    browser = login_app.test_client()
    import re

    csrf = re.search(r'name="csrf-token" content="([^"]+)"', browser.get("/login").get_data(as_text=True)).group(1)
    codes = [browser.post("/login", data={"token": f"guess-{i}", "csrf_token": csrf}).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    assert browser.post("/login", data={"token": TOKEN, "csrf_token": csrf}).status_code == 302  # issue 24 item 6


def test_tokenless_loopback_is_not_throttled(service):
    app = _app(service)
    app.config.update(EAGLE_AUTH_FAILURES=2)
    client = app.test_client()
    assert all(client.get("/api/v1/stats").status_code == 200 for _ in range(5))


# -- 6. uploads ---------------------------------------------------------------------------------------
@pytest.fixture
def served(service):
    """The app behind the same waitress server `eagle-index serve` builds."""
    from eagle_index.server import close_http_server, make_http_server

    app = _app(service, host="127.0.0.1")
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    server = make_http_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield app, server.effective_port
    close_http_server(server, thread)  # its loop thread ends here, not in a later test


def _post(port: int, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("POST", path)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        if body:
            connection.send(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_one_upload_limit_answered_by_the_app_through_waitress(served):
    _, port = served
    for size in (2 << 20, 3 << 30):  # above the app's limit; above waitress's default of 1 GiB: refused unread
        status, headers, body = _post(port, "/api/v1/search/upload",
                                      {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(size)}, b"--xyz\r\n")
        assert status == 413, body[:200]
        error = json.loads(body)["error"]
        assert error["status"] == 413 and "1 MiB" in error["message"]
        assert headers["Content-Security-Policy"].startswith("default-src") and headers["X-Content-Type-Options"] == "nosniff"
    body = b"--xyz\r\n" + b"x" * 1000 + b"\r\n--xyz--\r\n"  # under the limit: the app answers as usual
    status, _, answer = _post(port, "/api/v1/search/upload", {"Content-Type": "multipart/form-data; boundary=xyz",
                                                               "Content-Length": str(len(body))}, body)
    assert status == 400 and json.loads(answer)["error"]["field"] == "file"


def test_default_upload_limit_is_the_documented_one(service, monkeypatch):
    from eagle_index.server import make_http_server

    monkeypatch.delenv("EAGLE_INDEX_MAX_UPLOAD_MB", raising=False)
    app = _app(service)
    assert app.config["MAX_CONTENT_LENGTH"] == 4096 << 20
    server = make_http_server(app, "127.0.0.1", 0)
    try:
        assert server.adj.max_request_body_size == app.config["MAX_CONTENT_LENGTH"] + 1  # one limit
    finally:
        server.close()
    monkeypatch.setenv("EAGLE_INDEX_MAX_UPLOAD_MB", "64")  # read by Settings.load, as `serve` builds its settings
    from eagle_index.config import Settings

    settings = Settings.load(data_dir=service.settings.data_dir, models="tiny")
    assert _app(service, settings).config["MAX_CONTENT_LENGTH"] == 64 << 20


def test_failed_upload_is_deleted_and_named_by_the_users_file_name(service):
    client = _app(service).test_client()
    uploads = service.settings.data_dir / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    started = client.post("/api/v1/search/upload", data={"file": (io.BytesIO(b"not a slide at all"), "my broken scan.tiff")},
                          content_type="multipart/form-data")
    assert started.status_code == 202
    failed = wait_task(client, started.get_json()["task"])
    assert failed["state"] == "failed"
    assert "my broken scan.tiff" in failed["error"] and str(uploads) not in failed["error"] and started.get_json()["upload"] not in failed["error"]
    assert set(uploads.iterdir()) == before  # nothing of the failed upload stays


def test_label_import_messages_name_the_uploaded_file(service):
    client = _app(service).test_client()
    bad = client.post("/api/v1/labels", data={"file": (io.BytesIO(b"NAME,stage\nIMP-004,II\n"), "clinic.csv")},
                      content_type="multipart/form-data")
    message = error_of(bad, 400)
    assert message.startswith("clinic.csv:") and "uploads" not in message and "labels-" not in message
    report = client.post("/api/v1/labels", data={"file": (io.BytesIO(b"PATIENT,stage\nIMP-004,II\nZZ-NEW,I\n"), "clinic.csv")},
                         content_type="multipart/form-data").get_json()
    assert report["source"] == "clinic.csv" and report["unknown_patients"] == ["ZZ-NEW"]
    assert "clinic.csv" in report["notes"][0] and "uploads" not in report["notes"][0]
    assert "create_missing" in report["notes"][0] and "--create-missing" not in report["notes"][0]


# -- 9. small inconsistencies ---------------------------------------------------------------------
def test_deeply_nested_json_is_a_400(service):
    client = _app(service).test_client()
    body = "[" * 100_000 + "]" * 100_000
    response = client.post("/api/v1/search", data='{"patient": ' + body + "}", content_type="application/json")
    error_of(response, 400, "body")
    response = client.post("/api/v1/cohorts", data='{"name": "x", "filters": ' + "{\"a\":" * 50_000 + "1" + "}" * 50_001,
                           content_type="application/json")
    error_of(response, 400, "body")


def test_one_k_limit_everywhere(service):
    from eagle_index.errors import InputError
    from eagle_index.limits import MAX_K

    client = _app(service).test_client()
    assert "1000" in error_of(client.get(f"/api/v1/search?patient=IMP-001&k={MAX_K + 1}"), 400, "k")
    assert client.get(f"/api/v1/search?patient=IMP-001&k={MAX_K}").status_code == 200
    with pytest.raises(InputError, match="k must be between 1 and 1000"):
        service.search_patient("IMP-001", k=MAX_K + 1)
    done = subprocess.run([sys.executable, "-m", "eagle_index", "search", "--patient", "IMP-001", "-k", str(MAX_K + 1),
                           "--data-dir", str(Path(service.settings.data_dir) / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "1000" in done.stderr and "Traceback" not in done.stderr
