"""The eagle-index web app: a Flask app factory with the JSON API (and, later, the UI).

`create_app(settings=None, service=None)` builds a fresh app; tests pass their own service.
In `eagle-index serve` and `daemon`, the app shares the owner process's service, so the API
is how other commands reach a catalog that this process holds.
"""

from __future__ import annotations

from flask import Flask

from eagle_index.config import Settings


def create_app(settings: Settings | None = None, service=None, owner: dict | None = None) -> Flask:
    from eagle_index.service import EagleService
    from web.api import api
    from web.errors import register_error_handlers

    app = Flask(__name__)
    settings = settings or (service.settings if service is not None else Settings.load())
    app.config.update(
        EAGLE_SETTINGS=settings,
        EAGLE_SERVICE=service or EagleService(settings),
        EAGLE_OWNER=owner or {},
        MAX_CONTENT_LENGTH=64 << 20,
    )
    app.json.sort_keys = False  # keep the service's field order (queue states in lifecycle order)
    app.register_blueprint(api, url_prefix="/api/v1")
    register_error_handlers(app)
    return app
