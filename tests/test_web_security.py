"""Access token, login session, CSRF, security headers, pages without inline scripts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TOKEN = "s3cret-token-for-tests"
WEB = Path(__file__).resolve().parents[1] / "web"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService
    from test_web_fixtures import archive_copy

    with EagleService(Settings(data_dir=archive_copy(tmp_path_factory, "web-security"), models="tiny", device="cpu")) as svc:
        yield svc


@pytest.fixture
def locked(service):
    from web import create_app

    return create_app(service=service, owner={"role": "serve", "token": TOKEN}).test_client()


@pytest.fixture
def open_app(service):
    from web import create_app

    return create_app(service=service, owner={"role": "serve"}).test_client()


def _csrf(client, path="/search") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def _login(client) -> None:
    csrf = _csrf(client, "/login")
    response = client.post("/login", data={"token": TOKEN, "csrf_token": csrf, "next": "/cohorts"})
    assert response.status_code == 302 and response.headers["Location"].endswith("/cohorts")


def test_with_a_token_every_api_route_but_health_needs_it(locked):
    assert locked.get("/api/v1/health").status_code == 200
    for path in ("/api/v1/stats", "/api/v1/status", "/api/v1/search?patient=CASE-001", "/api/v1/openapi.json", "/api/v1/patients"):
        response = locked.get(path)
        assert response.status_code == 401 and response.get_json()["error"]["status"] == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert locked.get("/api/v1/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert locked.get("/api/v1/stats", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert locked.get("/api/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    posted = locked.post("/api/v1/patients/IMP-001/labels", json={"name": "reviewed", "value": "yes"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert posted.status_code == 200  # a Bearer token needs no CSRF token (browsers never add that header)
    assert locked.post("/api/v1/jobs", json={"paths": ["/x"]}).status_code == 401


def test_pages_need_a_login_with_the_token(locked):
    response = locked.get("/cohorts")
    assert response.status_code == 302 and "/login?next=/cohorts" in response.headers["Location"]
    assert locked.get("/static/css/app.css").status_code == 200
    page = locked.get("/login")
    assert page.status_code == 200 and 'type="password"' in page.get_data(as_text=True)
    csrf = _csrf(locked, "/login")
    assert locked.post("/login", data={"token": "wrong", "csrf_token": csrf}).status_code == 401
    assert locked.post("/login", data={"token": TOKEN}).status_code == 403  # no CSRF token
    _login(locked)
    cookie = locked.get_cookie("eagle_index_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"
    assert locked.get("/cohorts").status_code == 200
    assert locked.get("/api/v1/stats").status_code == 200  # the page's own API calls ride on the session
    csrf = _csrf(locked)
    body = {"name": "reviewed", "value": "no"}
    assert locked.post("/api/v1/patients/IMP-001/labels", json=body).status_code == 403
    assert locked.post("/api/v1/patients/IMP-001/labels", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert locked.post("/api/v1/patients/IMP-001/labels", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200
    assert locked.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert locked.get("/api/v1/stats").status_code == 401
    assert locked.get("/search").status_code == 302


def test_login_redirects_only_to_local_pages(locked):
    csrf = _csrf(locked, "/login")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        response = locked.post("/login", data={"token": TOKEN, "csrf_token": csrf, "next": target})
        assert response.status_code == 302 and response.headers["Location"] in ("/search", "http://localhost/search"), target
        csrf = _csrf(locked)


def test_without_a_token_browser_writes_need_csrf_but_the_cli_does_not(open_app):
    assert open_app.get("/api/v1/stats").status_code == 200 and open_app.get("/search").status_code == 200
    assert open_app.get("/login").status_code == 302  # nothing to log in to
    body = {"name": "checked", "value": "1"}
    cli = open_app.application.test_client(use_cookies=False)  # like the CLI: no cookie, no Origin
    assert cli.post("/api/v1/patients/IMP-002/labels", json=body).status_code == 200
    assert open_app.post("/api/v1/patients/IMP-002/labels", json=body).status_code == 403  # a browser with a cookie
    hostile = open_app.post("/api/v1/patients/IMP-002/labels", json=body, headers={"Origin": "https://evil.example"})
    assert hostile.status_code == 403 and "cross-site" in hostile.get_json()["error"]["message"]
    assert open_app.post("/api/v1/patients/IMP-002/labels", json=body, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    csrf = _csrf(open_app)
    same_origin = {"Origin": "http://localhost"}
    missing = open_app.post("/api/v1/patients/IMP-002/labels", json=body, headers=same_origin)
    assert missing.status_code == 403 and missing.get_json()["error"]["field"] == "csrf_token"
    good = open_app.post("/api/v1/patients/IMP-002/labels", json=body, headers={**same_origin, "X-CSRF-Token": csrf})
    assert good.status_code == 200


def test_security_headers_on_pages_api_and_errors(open_app):
    for path in ("/search", "/api/v1/stats", "/api/v1/nope", "/nope", "/static/js/common.js"):
        headers = open_app.get(path).headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    page = open_app.get("/nope")
    assert page.status_code == 404 and "text/html" in page.content_type and "Traceback" not in page.get_data(as_text=True)


def test_templates_and_scripts_have_no_inline_code_or_remote_assets():
    for template in (WEB / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert not re.search(r"\sstyle\s*=", text), template.name
        assert "http://" not in text and "https://" not in text, template.name
    for script in (WEB / "static" / "js").glob("*.js"):
        text = script.read_text()
        assert ".innerHTML" not in text and "eval(" not in text and "https://" not in text, script.name


def test_json_bodies_are_limited(service):
    from web import create_app

    client = create_app(service=service, config={"EAGLE_JSON_LIMIT": 100}).test_client()
    response = client.post("/api/v1/search", json={"patient": "CASE-001", "padding": "x" * 200})
    assert response.status_code == 413 and response.get_json()["error"]["status"] == 413
    assert client.post("/api/v1/search", json={"patient": "CASE-001", "k": 2}).status_code == 200


def test_the_server_refuses_other_addresses_without_a_token(tmp_path):
    from eagle_index.config import Settings
    from eagle_index.errors import InputError
    from eagle_index.server import OwnerOptions, run_owner

    with pytest.raises(InputError, match="EAGLE_INDEX_TOKEN"):
        run_owner(Settings(data_dir=tmp_path), OwnerOptions(role="serve", host="0.0.0.0", port=0))
