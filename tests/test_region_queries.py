"""The JSON shape of a region query becomes one typed value, checked once (issue 22 item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eagle_index.errors import InputError
from eagle_index.region_queries import (AnnotationQuery, BoxQuery, ImageQuery, PointQuery, SlideRef, TileRankQuery,
                                        region_query)


@pytest.mark.parametrize("given, expected", [
    ({"patient": "P1", "tile": "3"}, TileRankQuery("P1", 3)),
    ({"slide": "S-1", "x_um": 10, "y_um": "20.5"}, PointQuery(SlideRef("S-1"), 10.0, 20.5)),
    ({"slide_id": 7, "x_um": 0, "y_um": 0}, PointQuery(SlideRef(None, 7), 0.0, 0.0)),
    ({"slide": "S-1", "box": [1, 2, 448, 448]}, BoxQuery(SlideRef("S-1"), (1.0, 2.0, 448.0, 448.0))),
    ({"slide": "S-1", "annotation": "tumour"}, AnnotationQuery("tumour", "S-1")),
    ({"slide_id": 4, "annotation": 9}, AnnotationQuery(9, 4)),
    ({"annotation": 9}, AnnotationQuery(9, None)),
])
def test_each_json_shape_becomes_its_typed_query(given, expected):
    assert region_query(given) == expected
    assert region_query(expected) is expected  # a typed query passes through


def test_an_image_is_its_own_query_and_never_mixed_with_another():
    assert region_query({}, image="crop.png", mpp=0.5) == ImageQuery(Path("crop.png"), 0.5)
    assert region_query(None, image=Path("crop.png")) == ImageQuery(Path("crop.png"), None)
    with pytest.raises(InputError, match="either an image or a stored tile/region query"):
        region_query({"patient": "P1", "tile": 1}, image="crop.png")
    with pytest.raises(InputError, match="either an image"):
        region_query(TileRankQuery("P1", 1), image="crop.png")


@pytest.mark.parametrize("given, message", [
    ({}, "give one query: patient + tile"),
    ({"patient": "P1"}, "give one query"),
    ({"slide": "S-1"}, "give one query"),
    ({"slide": "S-1", "x_um": 1}, "give one query"),
    ({"slide": "S-1", "x_um": 1, "y_um": 2, "box": [0, 0, 1, 1]}, "give one query"),
    ({"patient": "P1", "tile": 1.5}, "tile must be an integer, got 1.5"),
    ({"patient": "P1", "tile": True}, "tile must be an integer"),
    ({"slide": "S-1", "x_um": "left", "y_um": 2}, "x_um must be a number, got 'left'"),
    ({"slide": "S-1", "x_um": float("nan"), "y_um": 2}, "x_um must be finite"),
    ({"slide": "S-1", "box": [0, 0, 448]}, "box must be X_UM,Y_UM,W_UM,H_UM"),
    ({"slide": "S-1", "box": "0,0,448,448"}, "box must be X_UM,Y_UM,W_UM,H_UM"),
    ({"slide": "S-1", "box": [0, 0, "wide", 448]}, "box must be a number"),
    ({"slide": "S-1", "annotation": "a", "box": [0, 0, 1, 1]}, "annotation query takes the slide and the annotation"),
])
def test_a_malformed_query_is_one_clear_error(given, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        region_query(given)
