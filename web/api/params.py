"""Parsing request input: every bad value becomes a 400 naming the field and the reason."""

from __future__ import annotations

import math

from flask import current_app, request

from web.errors import ApiError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def service():
    return current_app.config["EAGLE_SERVICE"]


def tasks():
    return current_app.extensions["eagle_tasks"]


def _int(raw, name: str, default: int | None, low: int, high: int) -> int | None:
    if raw is None:
        return default
    if isinstance(raw, bool):
        raise ApiError(400, f"{name} must be an integer, got {raw!r}", field=name)
    try:
        value = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
    except (TypeError, ValueError):
        value = None
    if value is None:
        raise ApiError(400, f"{name} must be an integer, got {raw!r}", field=name)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}", field=name)
    return value


def int_arg(name: str, default: int | None, low: int = 1, high: int = 1000) -> int | None:
    return _int(request.args.get(name), name, default, low, high)


def int_field(body: dict, name: str, default: int | None, low: int = 1, high: int = 1000) -> int | None:
    return _int(body.get(name), name, default, low, high)


def _float(raw, name: str, default: float | None, low: float, high: float) -> float | None:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise ApiError(400, f"{name} must be a number, got {raw!r}", field=name)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a number, got {raw!r}", field=name) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}, got {raw!r}", field=name)
    return value


def float_arg(name: str, default: float | None = None, low: float = -math.inf, high: float = math.inf) -> float | None:
    return _float(request.args.get(name), name, default, low, high)


def float_field(body: dict, name: str, default: float | None = None, low: float = -math.inf, high: float = math.inf) -> float | None:
    return _float(body.get(name), name, default, low, high)


def bool_value(raw, name: str, default: bool = False) -> bool:
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ApiError(400, f"{name} must be true or false, got {raw!r}", field=name)


def bool_arg(name: str, default: bool = False) -> bool:
    return bool_value(request.args.get(name), name, default)


def str_field(body: dict, name: str, required: bool = False, default: str | None = None, max_len: int = 500) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(400, f"{name} is required", field=name)
        return default
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", field=name)
    if len(value) > max_len:
        raise ApiError(400, f"{name} is longer than {max_len} characters", field=name)
    return value.strip()


def checked(check, field: str, *args, **kwargs):
    """`check(*args, **kwargs)` from `eagle_index.identifiers` (the one rule for ids and names); its error
    becomes a 400 naming `field`."""
    from eagle_index.errors import InputError

    try:
        return check(*args, **kwargs)
    except InputError as exc:
        raise ApiError(400, str(exc), field=field) from None


def identifier_field(body: dict, name: str, kind: str, required: bool = False) -> str | None:
    """An identifier (patient id, cohort name, ...) from a JSON body, held to the identifier rule:
    a 400 naming the field otherwise (the value quoted short, however long it was)."""
    from eagle_index.identifiers import check_identifier

    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(400, f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", field=name)
    return checked(check_identifier, name, kind, value)


def str_list(body: dict, name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"{name} must be a list of strings", field=name)
    return [v for v in (s.strip() for s in value) if v]


def choice(value: str | None, name: str, options, default: str | None = None) -> str | None:
    if value is None or value == "":
        return default
    if value not in options:
        raise ApiError(400, f"{name} must be one of {', '.join(options)}, got {value!r}", field=name)
    return value


def json_body() -> dict:
    """The request's JSON object (an empty body is {}); anything else is a 400."""
    if not request.get_data(cache=True):
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nesting deeper than Python's parser goes
        raise ApiError(400, "the request body is nested too deeply", field="body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", field="body")
    return body


def page_args(default_limit: int = 50, max_limit: int = 1000) -> tuple[int, int]:
    return int_arg("limit", default_limit, 1, max_limit), int_arg("offset", 0, 0, 10**9)


def label_args(name: str = "label") -> list[str]:
    """Repeatable NAME=VALUE query parameters (VALUE * = has the label)."""
    values = request.args.getlist(name)
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ApiError(400, f"{name} filter {text!r}: expected NAME=VALUE (VALUE * = has the label)", field=name)
    return values


def check_object(raw: dict, field: str, lists=(), numbers=(), strings=(), bools=(), mappings=()) -> dict:
    """Type-check the members of a JSON object before a service builds from it: lists of strings
    (a single string becomes a one-item list), numbers, strings, booleans, label mappings
    ({name: value or [values]}, or a list of "NAME=VALUE")."""
    out = dict(raw)
    for key in lists:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = [value]
        elif value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ApiError(400, f"{field}.{key} must be a list of strings", field=field)
    for key in numbers:
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ApiError(400, f"{field}.{key} must be a number", field=field)
    for key in strings:
        value = out.get(key)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"{field}.{key} must be a string", field=field)
    for key in bools:
        value = out.get(key)
        if value is not None and not isinstance(value, bool):
            raise ApiError(400, f"{field}.{key} must be true or false", field=field)
    for key in mappings:
        value = out.get(key)
        if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            continue
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))) for k, v in value.items())
        if not ok:
            raise ApiError(400, f"{field}.{key} must map label names to a value or a list of values", field=field)
    return out
