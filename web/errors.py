"""One JSON error shape for every API failure: {"error": {"status", "message", "field"?}}.

Pages get the same information as a small HTML page. Neither ever shows a stack trace: an
unexpected exception is logged and answered with a generic 500.
"""

from __future__ import annotations

import logging
import re

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from eagle_index.errors import EagleIndexError, InputError, NotFoundError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def user_named(message: str, stored, original: str) -> str:
    """A message about a stored upload, naming the file the user sent instead of the server path."""
    for text in (str(stored), str(stored.resolve()), stored.name, stored.stem):
        message = message.replace(text, original)
    return message


def limit_text(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"


# Service messages are written for the command line; pages and the API name their own fields.
PAGE_WORDS = {
    "--min-similarity": "“Minimum cosine to a seed”", "--seed": "“Seed patients”", "--positive": "“Positive class”",
    "--vs-rest": "“positive class vs all other values”", "--folds": "“Folds”", "--kind": "the vector kind",
    "--signature": "the vector signature", "--cohort": "the cohort", "--label": "the label", "--patient": "the patient",
    "--min-probability": "“Min. probability”", "--probe": "the probe", "--mpp": "“µm per pixel”",
}
# Whole phrases first, where a flag is followed by an example value the form does not take that way.
PAGE_PHRASES = [
    (re.compile(r"with --mpp \(e\.g\. --mpp ([0-9.]+)\)"), r"in “µm per pixel” (e.g. \1)"),
    # a server's models are chosen when it starts: the page user cannot load others
    (re.compile(r"load those models \(--models / --weights-dir\)"), "start the server with those models"),
    (re.compile(r"\(use `cohort refresh` or --replace\)"), "(refresh it, or choose another name)"),
]
_FLAG = re.compile(r"(?:choose one with )?--[a-z][a-z-]*")


def page_words(message: str) -> str:
    """A service message with CLI flags replaced by the names the web forms use."""
    def swap(match: re.Match) -> str:
        text = match.group(0)
        if text.startswith("choose one with "):
            return "choose another " + PAGE_WORDS.get(text.removeprefix("choose one with "), "setting").removeprefix("the ")
        return PAGE_WORDS.get(text, text)

    for pattern, replacement in PAGE_PHRASES:
        message = pattern.sub(replacement, message)
    return _FLAG.sub(swap, message)


def error_response(status: int, message: str, field: str | None = None, extra_headers: dict | None = None):
    body = {"status": status, "message": message}
    if field:
        body["field"] = field
    if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        response = jsonify({"error": body})
    else:
        response = render_template("error.html", page="error", title=f"{status}", status=status, message=message)
    headers = {"WWW-Authenticate": 'Bearer realm="eagle-index"'} if status == 401 else {}
    headers.update(extra_headers or {})
    return response, status, headers


def status_of(exc: EagleIndexError) -> int:
    return 404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, InputError) else 409


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(exc: ApiError):
        return error_response(exc.status, exc.message, exc.field, exc.headers)

    @app.errorhandler(EagleIndexError)
    def _project(exc: EagleIndexError):
        return error_response(status_of(exc), page_words(str(exc)))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        size = limit_text(app.config.get("MAX_CONTENT_LENGTH") or 0)
        field = "file" if request.mimetype == "multipart/form-data" else None
        return error_response(413, f"request larger than the server's limit ({size})", field=field)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error (details are in the server log)")
