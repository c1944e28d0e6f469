"""One rule for identifiers and names, applied at every entry point (issue 24 item 10).

Ground floor: imports nothing but `errors` and `limits`.

- **Addressable identifiers** (patient ids, cohort names, probe names: each is a URL path segment,
  `/api/v1/patients/<id>`, `/api/v1/cohorts/<name>`): `check_identifier`. Refused: not a string,
  empty (after trimming surrounding whitespace), longer than `limits.MAX_IDENTIFIER_CHARS`,
  control characters (C0, DEL, C1: NUL, tab, CR, LF, ...; also U+2028/U+2029), bidirectional
  overrides and isolates (U+202A-U+202E, U+2066-U+2069, which make text display in another order
  than it is stored), `.` and `..`, and `/` or `\\` anywhere. The rule chosen for `/` is to refuse
  it, not to make such ids addressable: a path segment cannot hold it, and a patient id with `/`
  also becomes a nested group in EAGLE's `.h5` layout.
- **Label names and values** (`check_text`): the same character rules (so a clinical table the
  app exports is a table it re-imports) and a length limit; `/`, `.` and `..` are allowed.

Each returns the value trimmed of surrounding whitespace, or raises one `InputError` naming
`where` (a file and line, an API field) when given, the kind of value, a short quotation of it
(at most 40 characters) and the problem.
"""

from __future__ import annotations

from eagle_index.errors import InputError
from eagle_index.limits import MAX_IDENTIFIER_CHARS, MAX_LABEL_VALUE_CHARS

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
LINE_SEPARATORS = frozenset("\u2028\u2029")
SHOWN_CHARS = 40


class IdentifierError(InputError):
    """A name or identifier that breaks the rule (see the module docstring)."""


def quoted(value: str) -> str:
    """`value` as repr shows it (escapes visible), cut to SHOWN_CHARS characters."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return repr(value[:SHOWN_CHARS])[:-1] + "…" + repr(value)[-1]


def _bad_character(value: str) -> str | None:
    for ch in value:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F or ch in LINE_SEPARATORS:
            names = {0: "NUL", 9: "tab", 10: "line feed", 13: "carriage return"}
            return f"contains a control character ({names.get(code, f'U+{code:04X}')})"
        if ch in BIDI_CONTROLS:
            return f"contains a bidirectional text control (U+{code:04X})"
    return None


def problem(value, max_chars: int = MAX_IDENTIFIER_CHARS, addressable: bool = True) -> str | None:
    """What is wrong with `value` (already trimmed) under the rule, or None."""
    if not isinstance(value, str):
        return f"must be text, not {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > max_chars:
        return f"is {len(value):,} characters long, over the limit of {max_chars:,}"
    bad = _bad_character(value)
    if bad:
        return bad
    if addressable:
        if value in (".", ".."):
            return "cannot be '.' or '..' (it names a path in URLs)"
        if "/" in value or "\\" in value:
            return "contains '/' or '\\' (it must be addressable as one URL path segment, e.g. /api/v1/patients/<id>)"
    return None


def visible(text: str) -> str:
    """`text` with control characters and bidi controls escaped (\\n, \\u202e): safe on one line of a terminal or log."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if _bad_character(ch) else ch for ch in str(text))


def _check(kind: str, value, where: str | None, max_chars: int, addressable: bool) -> str:
    trimmed = value.strip() if isinstance(value, str) else value
    reason = problem(trimmed, max_chars, addressable)
    if reason is None:
        return trimmed
    shown = f" {quoted(trimmed)}" if isinstance(trimmed, str) and trimmed else ""
    prefix = f"{visible(where)}: " if where else ""  # a file name may hold the very characters refused
    raise IdentifierError(f"{prefix}{kind}{shown} {reason}")


def check_identifier(kind: str, value, where: str | None = None) -> str:
    """An addressable identifier (patient id, cohort name, probe name), trimmed; IdentifierError otherwise."""
    return _check(kind, value, where, MAX_IDENTIFIER_CHARS, addressable=True)


def check_label_name(value, where: str | None = None) -> str:
    """A label name (a clinical table's column), trimmed; IdentifierError otherwise."""
    return _check("label name", value, where, MAX_IDENTIFIER_CHARS, addressable=False)


def check_label_value(value, where: str | None = None, name: str | None = None) -> str:
    """A label value, trimmed; IdentifierError otherwise (an empty value is the caller's business: missing)."""
    kind = f"value of label {quoted(name)}" if name else "label value"
    return _check(kind, value, where, MAX_LABEL_VALUE_CHARS, addressable=False)


__all__ = ["BIDI_CONTROLS", "IdentifierError", "check_identifier", "check_label_name", "check_label_value", "problem",
           "quoted", "visible"]
