"""The few error types eagle-index raises.

Front ends translate them at the edge: the CLI prints a one-line message and exits non-zero,
the web API returns one JSON error shape. Everything else is a bug and may show a traceback.
"""

from __future__ import annotations

import re


class EagleIndexError(Exception):
    """Base class: an expected failure whose message is meant for the user."""

    exit_code = 1


class InputError(EagleIndexError):
    """Bad user input: a file that cannot be parsed, a wrong dimension, a missing column."""

    exit_code = 2


class SlideError(InputError):
    """A slide that cannot be opened, read, or tiled at a trustworthy scale.

    PIL's "cannot identify image file ..." (what a file that is neither a slide nor an image gets,
    after OpenSlide did not recognise it either) is said in the user's words.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(_unreadable_in_words(str(message)), *args)


_UNIDENTIFIED = re.compile(r"cannot open slide: cannot identify image file\b.*$")


def _unreadable_in_words(message: str) -> str:
    return _UNIDENTIFIED.sub("cannot open slide: not a slide or image file OpenSlide/PIL can read", message)


class NotFoundError(EagleIndexError):
    """A patient, slide, vector or other object that the catalog does not hold."""

    exit_code = 3


class CatalogError(EagleIndexError):
    """The catalog cannot be used as it is (wrong schema revision, locked by another process)."""

    exit_code = 4


class ModelError(EagleIndexError):
    """Model weights missing, with the wrong digest, or not matching the architecture."""

    exit_code = 5


def is_interrupt(exc: BaseException | None) -> bool:
    """Whether `exc` is Ctrl-C. DuckDB notices the signal first when it lands during a query and
    fails the query instead ("Query interrupted": a RuntimeError through duckdb_engine, an
    InterruptException from duckdb, either possibly wrapped by SQLAlchemy), so the front ends
    must read that as the interrupt it is, never as an internal error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "InterruptException":
            return True
        if isinstance(exc, RuntimeError) and str(exc).strip() == "Query interrupted":
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False
