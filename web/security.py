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
- DNS rebinding: without a token, only requests whose `Host` names this server are served
  (127.0.0.1, localhost, [::1], the bound host, and the names in EAGLE_INDEX_ALLOWED_HOSTS);
  any other name is answered 421 on every route, before anything else runs.
- Throttling (with a token): a client (remote address) with `EAGLE_AUTH_FAILURES` failed logins
  or unauthenticated API calls within `EAGLE_AUTH_WINDOW` seconds gets 429 (with Retry-After)
  for every further failure until the window has passed. A correct token (Bearer or login form)
  and a logged-in session are never throttled and never counted (issue 24: every local user is
  127.0.0.1, so throttling the address locked the owner out); only failures are.
- JSON bodies are limited to `EAGLE_JSON_LIMIT` bytes; every body (uploads) to
  MAX_CONTENT_LENGTH, checked from Content-Length before anything is read.
- Every response: CSP without inline scripts or styles, nosniff, frame denial, same-origin
  referrers.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from collections import deque
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


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
MIN_TOKEN_LENGTH = 16


def check_token(token: str | None) -> str | None:
    """The access token to use (None: none set), or a ValueError saying why it is refused."""
    if token is None or token == "":
        return None
    from eagle_index.config import ENV_TOKEN, token_characters_problem

    problem = token_characters_problem(token)
    if problem:  # a line break would end the Authorization header early (issue 24 item 11); never echo the token
        raise ValueError(f"{ENV_TOKEN} {problem}: a token is printable ASCII on one line; make one with: "
                         "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    if len(token.strip()) < MIN_TOKEN_LENGTH or token != token.strip():
        raise ValueError(f"EAGLE_INDEX_TOKEN must be at least {MIN_TOKEN_LENGTH} characters without surrounding spaces "
                         f"(got {len(token.strip())}); make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    return token


def host_name(header: str | None) -> str | None:
    """The host name of a Host header, lower case, without port or brackets; None if malformed."""
    if not header or any(c.isspace() or c in "/\\@?#" for c in header):
        return None
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:] if end > 0 else None
        if rest is None or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        name = header[1:end]
    else:
        name, sep, port = header.partition(":")
        if sep and not port.isdigit():
            return None
    name = name.lower().rstrip(".")
    return name or None


def allowed_hosts(bound: str | None, extra) -> frozenset[str]:
    names = set(LOOPBACK_NAMES)
    if bound and bound not in ("0.0.0.0", "::", ""):
        names.add(bound.lower().strip("[]"))
    names.update(n.strip().lower().rstrip(".") for n in extra if n and n.strip())
    return frozenset(names)


def _check_host() -> None:
    """DNS rebinding: a token-less server answers only to its own names."""
    if token_required():
        return
    name = host_name(request.headers.get("Host"))
    if name is None:
        raise ApiError(400, "malformed Host header")
    allowed = current_app.config["EAGLE_ALLOWED_HOSTS"]
    if name in allowed:
        return
    try:
        if ipaddress.ip_address(name).is_loopback and "127.0.0.1" in allowed:
            return
    except ValueError:
        pass
    raise ApiError(421, f"this server answers only to {', '.join(sorted(allowed))} (Host {name!r} refused; "
                        "add it to EAGLE_INDEX_ALLOWED_HOSTS, or set EAGLE_INDEX_TOKEN)")


class FailureThrottle:
    """Failed authentications per client within a sliding window (in process, thread-safe)."""

    def __init__(self, max_clients: int = 10_000):
        self._lock = threading.Lock()
        self._failures: dict[str, deque] = {}
        self.max_clients = max_clients

    def _recent(self, client: str, window: float, now: float) -> deque:
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and times[0] <= now - window:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times

    def retry_after(self, client: str, limit: int, window: float) -> int | None:
        """Seconds until this client may try again, or None if it may try now."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, window, now)
            if len(times) < limit:
                return None
            return max(1, int(times[len(times) - limit] + window - now + 0.999))

    def record(self, client: str, window: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self.max_clients and client not in self._failures:
                for key in list(self._failures)[: self.max_clients // 10]:  # forget the oldest clients
                    self._failures.pop(key, None)
            self._recent(client, window, now)
            self._failures.setdefault(client, deque(maxlen=1000)).append(now)


def _client() -> str:
    return request.remote_addr or "unknown"


def throttle_check() -> None:
    """429 while this client has too many recent failed authentications."""
    config = current_app.config
    wait = config["EAGLE_THROTTLE"].retry_after(_client(), config["EAGLE_AUTH_FAILURES"], config["EAGLE_AUTH_WINDOW"])
    if wait is not None:
        raise ApiError(429, f"too many failed attempts from this client: try again in {wait} s", field=None,
                       headers={"Retry-After": str(wait)})


def record_failure() -> None:
    current_app.config["EAGLE_THROTTLE"].record(_client(), current_app.config["EAGLE_AUTH_WINDOW"])


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
    endpoint = request.endpoint or ""
    if not token_required():
        return None
    if session.get("auth") is True:
        g.auth = "session"
    else:
        bearer = _bearer()
        if bearer is not None and token_matches(bearer):
            g.auth = "token"
    login = endpoint == "ui.login" and request.method == "POST"
    if g.auth is None and (endpoint not in PUBLIC_API | PUBLIC_PAGES or login):
        if not (login and token_matches(request.form.get("token"))):
            throttle_check()  # a failure from a throttled client: 429; a correct token is never throttled (issue 24)
    if is_api_request():
        if g.auth is None and endpoint not in PUBLIC_API:
            record_failure()
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
    upload_limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if upload_limit and (request.content_length or 0) > upload_limit:
        from web.errors import limit_text

        raise ApiError(413, f"request larger than the server's limit ({limit_text(upload_limit)})",
                       field="file" if request.mimetype == "multipart/form-data" else None)


def install_security(app: Flask) -> None:
    @app.before_request
    def _guard():
        _check_host()
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
        for key, value in security_headers(response.mimetype).items():
            if key != "Cache-Control" or "Cache-Control" not in response.headers:
                response.headers[key] = value
        return response


def security_headers(mimetype: str | None) -> dict[str, str]:
    """The headers every response carries (also the HTTP server's own error answers)."""
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
        "Cache-Control": "no-store" if mimetype in ("application/json", "text/html") else "private, max-age=300",
    }
