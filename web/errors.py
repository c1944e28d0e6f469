"""One JSON error shape for every API failure: {"error": {"status", "message", "field"?}}."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from eagle_index.errors import EagleIndexError, InputError, NotFoundError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_response(status: int, message: str, field: str | None = None):
    body = {"status": status, "message": message}
    if field:
        body["field"] = field
    return jsonify({"error": body}), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(exc: ApiError):
        return error_response(exc.status, exc.message, exc.field)

    @app.errorhandler(EagleIndexError)
    def _project(exc: EagleIndexError):
        status = 404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, InputError) else 409
        return error_response(status, str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error (details are in the server log)")
