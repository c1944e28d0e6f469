"""JSON API, `/api/v1`: one parent blueprint with a child blueprint per topic.

Handlers parse and validate input (`web.api.params`), call the service facade, and return
JSON; errors use the one shape of `web.errors`. The OpenAPI document (`web.openapi`) lists
every route registered here, and a test keeps the two in step.
"""

from __future__ import annotations

from importlib import import_module

from flask import Blueprint

from web.api import catalog, cohorts, core, jobs, media, probes, regions, search, viewer

# `from web.api import annotations` would give this module's `from __future__ import annotations` feature
annotations_api = import_module("web.api.annotations")

api = Blueprint("api", __name__)
for module in (core, catalog, search, cohorts, probes, jobs, media, viewer, regions, annotations_api):
    api.register_blueprint(module.bp)
