"""Access control and browser hardening, applied to every request.

Rules (tested in tests/test_web_security.py):
- No token configured (the default: the server binds 127.0.0.1 only): no login.
- A token configured (`owner["token"]`, from EAGLE_INDEX_TOKEN; required to bind beyond
  loopback): every API route except `/api/v1/health` needs `Authorization: Bearer <token>`
  or a logged-in session; pages redirect to `/login`, which checks the token once and keeps a
  signed session cookie (HttpOnly, SameSite=Strict).
- CSRF: a state-changing request (POST/PUT/PATCH/DELETE) sent by a browser - it carries a
  cookie, an Origin or a Sec-Fetch-Site header - must name this server as its origin and carry
  the session's CSRF token (header `X-CSRF-Token`, or form field `csrf_token`). Requests with
  a valid Bearer token, and non-browser clients on an unauthenticated loopback server (the
  CLI), need none: browsers never add an Authorization header on their own.
- JSON bodies are limited to `EAGLE_JSON_LIMIT` bytes; file uploads to MAX_CONTENT_LENGTH.
- Every response: CSP without inline scripts or styles, nosniff, frame denial, same-origin
  referrers.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, current_app, g, redirect, request, session, url_for

from web.errors import ApiError

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
PUBLIC_API = {"api.core.health"}
PUBLIC_PAGES = {"ui.login", "static"}
# OpenSeadragon (the slide viewer) injects one fixed <style> rule; only that exact text is allowed, by hash.
OSD_STYLE_SHA256 = "9xTiqzfwFaL2SGb1rmr8gysEwVVjIvqWAgmZgqFqpEE="
CSP = ("default-src 'self'; script-src 'self'; " f"style-src 'self' 'sha256-{OSD_STYLE_SHA256}'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def token_required() -> bool:
    return bool(current_app.config.get("EAGLE_TOKEN"))


def token_matches(candidate: str | None) -> bool:
    expected = current_app.config.get("EAGLE_TOKEN")
    return bool(expected and candidate) and hmac.compare_digest(str(candidate).encode(), str(expected).encode())


def is_api_request() -> bool:
    return request.path == "/api/v1" or request.path.startswith("/api/")


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another host: no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("ui.search")
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else url_for("ui.search")


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _authenticate():
    g.auth = None
    bearer = _bearer()
    if bearer is not None and token_matches(bearer):
        g.auth = "token"
    elif token_required() and session.get("auth") is True:
        g.auth = "session"
    if not token_required():
        return None
    endpoint = request.endpoint or ""
    if is_api_request():
        if g.auth is None and endpoint not in PUBLIC_API:
            raise ApiError(401, "this server needs its access token: send 'Authorization: Bearer <token>' or log in")
        return None
    if g.auth is None and endpoint not in PUBLIC_PAGES:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    return None


def _same_origin(origin: str) -> bool:
    if origin == "null":
        return False
    own = urlsplit(request.host_url)
    other = urlsplit(origin)
    return (other.scheme, other.netloc) == (own.scheme, own.netloc)


def _check_csrf() -> None:
    if request.method not in UNSAFE or g.get("auth") == "token":
        return
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    browser = bool(origin or fetch_site or request.headers.get("Cookie") or g.get("auth") == "session")
    if not browser:
        return  # a programmatic client: no ambient credentials a third-party page could borrow
    if fetch_site == "cross-site" or (origin and not _same_origin(origin)):
        raise ApiError(403, "cross-site request refused")
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        sent = request.form.get("csrf_token")
    expected = session.get("csrf")
    if not sent or not expected or not hmac.compare_digest(str(sent).encode(), str(expected).encode()):
        raise ApiError(403, "missing or invalid CSRF token (reload the page)", field="csrf_token")


def _check_json_size() -> None:
    limit = current_app.config["EAGLE_JSON_LIMIT"]
    if request.mimetype == "application/json" and (request.content_length or 0) > limit:
        raise ApiError(413, f"JSON body larger than {limit >> 20} MiB")


def install_security(app: Flask) -> None:
    @app.before_request
    def _guard():
        _check_json_size()
        response = _authenticate()
        if response is not None:
            return response
        _check_csrf()
        return None

    @app.context_processor
    def _template_values():
        return {"csrf_token": csrf_token, "token_required": token_required(), "logged_in": g.get("auth") == "session"}

    @app.after_request
    def _headers(response):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store" if response.mimetype in ("application/json", "text/html") else "private, max-age=300"
        return response
