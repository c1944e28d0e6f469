"""Region queries as typed values: what `service.regions.search` is asked.

The API and the CLI speak in the JSON shape (`{"patient", "tile"}`, `{"slide", "x_um", "y_um"}`,
`{"slide", "box"}`, `{"slide", "annotation"}`, or an image file); `region_query` turns that into
one of the classes below, checking the keys and the numbers once, so that nothing below it
sniffs dictionary keys. `QueryToken` is what encoding any of them gives: the class token
searched with and the facts the answer reports about the query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from eagle_index.errors import InputError

ONE_QUERY = "give one query: patient + tile, slide + x_um + y_um, slide + box, or an image"


@dataclass(frozen=True)
class SlideRef:
    """A stored slide by name or by catalog id (an all-digit name may also be an id)."""

    name: str | int | None = None
    slide_id: int | None = None


@dataclass(frozen=True)
class TileRankQuery:
    """A patient's selected tile, by its attention rank (1 = highest)."""

    patient: str
    tile: int


@dataclass(frozen=True)
class PointQuery:
    """The stored tile of a slide under a point (µm), or the grid tile holding it, read and encoded."""

    slide: SlideRef
    x_um: float
    y_um: float


@dataclass(frozen=True)
class BoxQuery:
    """A box of a slide (x, y, width, height in µm), read and encoded."""

    slide: SlideRef
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class AnnotationQuery:
    """A stored annotation, by id, or by name (or id) on a slide given by name or id."""

    annotation: str | int
    slide: str | int | None = None


@dataclass(frozen=True)
class ImageQuery:
    """An image file; `mpp` (µm/px) unless the file records its resolution."""

    path: Path
    mpp: float | None = None


RegionQuery = Union[TileRankQuery, PointQuery, BoxQuery, AnnotationQuery, ImageQuery]
REGION_QUERY_TYPES = (TileRankQuery, PointQuery, BoxQuery, AnnotationQuery, ImageQuery)


@dataclass
class QueryToken:
    """An encoded query: the L2-normalized class token, the tile set it belongs to (signature),
    what the answer says about the query, the query's own patient (left out of the hits unless
    asked; None for an image) and notes for the user."""

    token: np.ndarray
    signature: str
    info: dict
    patient_id: int | None = None
    notes: list[str] = field(default_factory=list)


def region_query(query: dict | RegionQuery | None, image: Path | str | None = None,
                 mpp: float | None = None) -> RegionQuery:
    """The typed query for the JSON-shaped `query` (or `image`), with the errors a user can act on."""
    if isinstance(query, REGION_QUERY_TYPES):
        if image is not None:
            raise InputError("give either an image or a stored tile/region query, not both")
        return query
    query = dict(query or {})
    if image is not None:
        if query:
            raise InputError("give either an image or a stored tile/region query, not both")
        return ImageQuery(Path(image), mpp)
    keys = set(query)
    if keys == {"patient", "tile"}:
        return TileRankQuery(str(query["patient"]), as_int(query["tile"], "tile"))
    if "annotation" in keys:
        if not keys <= {"slide", "slide_id", "annotation"}:
            raise InputError("an annotation query takes the slide and the annotation (name or id) only")
        return AnnotationQuery(query["annotation"], query.get("slide", query.get("slide_id")))
    if not keys & {"slide", "slide_id"}:
        raise InputError(ONE_QUERY)
    slide = SlideRef(query.get("slide"), query.get("slide_id"))
    if keys <= {"slide", "slide_id", "x_um", "y_um"} and {"x_um", "y_um"} <= keys:
        return PointQuery(slide, as_float(query["x_um"], "x_um"), as_float(query["y_um"], "y_um"))
    if keys <= {"slide", "slide_id", "box"} and "box" in keys:
        box = query["box"]
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise InputError("box must be X_UM,Y_UM,W_UM,H_UM")
        x, y, w, h = (as_float(v, "box") for v in box)
        return BoxQuery(slide, (x, y, w, h))
    raise InputError(ONE_QUERY)


def as_int(value, name: str) -> int:
    """`value` as an integer (no bools, no fractions), or an error naming `name`."""
    try:
        if isinstance(value, bool):
            raise ValueError
        out = int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return out
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {value!r}") from None


def as_float(value, name: str) -> float:
    """`value` as a finite number (no bools), or an error naming `name`."""
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InputError(f"{name} must be finite, got {value!r}")
    return out
