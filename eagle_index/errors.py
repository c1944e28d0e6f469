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
