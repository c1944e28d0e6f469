"""The eagle-index web app: a Flask app factory with the JSON API and the UI pages.

`create_app(settings=None, service=None, owner=None)` builds a fresh app; tests pass their own
service. In `eagle-index serve` and `daemon` the app shares the owner process's service, so
the API is how other commands reach a catalog that this process holds.

Layout: `web/api/` (blueprints by topic under `/api/v1`), `web/ui.py` (pages), `web/security.py`
(token, login session, CSRF, headers), `web/tasks.py` (background jobs owned by the app),
`web/urls.py` (the one place URLs are made: services answer ids and coordinates), `service.media` (thumbnails and
tile images), `service.browse` (read-only listing queries),
`web/openapi.py` (the OpenAPI document), `templates/` and `static/` (no CDN, no build step;
`static/vendor/` holds OpenSeadragon and Chart.js, copied from npm by `make`).
"""

from __future__ import annotations

import secrets

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from eagle_index.config import Settings



class ResultsJSON(DefaultJSONProvider):
    """Flask's JSON with the service's typed results as their JSON shape (`as_dict()`), never
    dataclasses.asdict (their field names are not the API's)."""

    @staticmethod
    def default(value):
        if hasattr(value, "as_dict"):
            return value.as_dict()
        return DefaultJSONProvider.default(value)

def create_app(settings: Settings | None = None, service=None, owner: dict | None = None,
               config: dict | None = None) -> Flask:
    """A fresh app. `owner` (from the owner process): role, roots (folders POST /jobs may name),
    resolver, token, host (the bound address, accepted in Host headers). `config` overrides Flask/app settings (tests: small upload limits)."""
    from eagle_index.service import EagleService
    from web.api import api
    from web.errors import register_error_handlers
    from web.security import FailureThrottle, allowed_hosts, install_security
    from web.tasks import TaskRunner
    from web.ui import ui

    app = Flask(__name__)
    settings = settings or (service.settings if service is not None else Settings.load())
    owner = dict(owner or {})
    app.config.update(
        EAGLE_SETTINGS=settings,
        EAGLE_SERVICE=service or EagleService(settings),
        EAGLE_OWNER=owner,
        EAGLE_TOKEN=owner.get("token") or None,
        EAGLE_ALLOWED_HOSTS=allowed_hosts(owner.get("host"), settings.allowed_hosts),
        EAGLE_THROTTLE=FailureThrottle(),
        EAGLE_AUTH_FAILURES=10,  # failed logins / unauthenticated API calls per client ...
        EAGLE_AUTH_WINDOW=60.0,  # ... within this many seconds, then 429
        EAGLE_JSON_LIMIT=16 << 20,
        MAX_CONTENT_LENGTH=settings.max_upload_mb << 20,  # env EAGLE_INDEX_MAX_UPLOAD_MB
        SECRET_KEY=secrets.token_bytes(32),  # sessions last as long as the process
        SESSION_COOKIE_NAME="eagle_index_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=False,  # plain HTTP on loopback; set True behind a TLS proxy
    )
    app.config.update(config or {})
    app.extensions["eagle_tasks"] = TaskRunner()
    app.json = ResultsJSON(app)  # typed results (eagle_index.results) are sent as their as_dict()
    app.json.sort_keys = False  # keep the service's field order (queue states in lifecycle order)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(ui)
    install_security(app)
    register_error_handlers(app)
    return app
