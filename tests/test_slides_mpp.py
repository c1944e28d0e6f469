"""MPP resolution: order of trust, recorded source, and refusal of values that look wrong."""

import math

import pytest

from eagle_index.errors import SlideError
from eagle_index.slides.mpp import resolve_mpp

OPENSLIDE = {"openslide.mpp-x": "0.2521", "openslide.mpp-y": "0.2521", "openslide.vendor": "aperio"}


def test_override_wins_over_everything():
    props = {**OPENSLIDE, "openslide.objective-power": "40"}
    result = resolve_mpp("s.svs", props, override=0.5, default_mpp=1.0)
    assert (result.mpp, result.source) == (0.5, "override")


def test_openslide_mpp_then_objective_then_default():
    assert resolve_mpp("s.svs", OPENSLIDE).source == "openslide"
    assert resolve_mpp("s.svs", OPENSLIDE).mpp == pytest.approx(0.2521)
    by_objective = resolve_mpp("s.svs", {"openslide.objective-power": "40"}, default_mpp=1.0)
    assert (by_objective.mpp, by_objective.source) == (0.25, "objective-power")
    by_default = resolve_mpp("s.png", {}, default_mpp=0.5)
    assert (by_default.mpp, by_default.source) == (0.5, "default")


def test_generic_tiff_mpp_is_labelled_as_tiff_resolution():
    props = {"openslide.vendor": "generic-tiff", "openslide.mpp-x": "0.5", "openslide.mpp-y": "0.5",
             "tiff.ResolutionUnit": "centimeter", "tiff.XResolution": "20000", "tiff.YResolution": "20000"}
    assert resolve_mpp("s.tiff", props).source == "tiff-resolution"


def test_inch_resolution_tags_that_openslide_ignores():
    props = {"tiff.ResolutionUnit": "inch", "tiff.XResolution": "101600", "tiff.YResolution": "101600"}
    result = resolve_mpp("s.tiff", props)
    assert result.source == "tiff-resolution" and result.mpp == pytest.approx(0.25)


def test_resolution_unit_none_is_not_a_scale():
    props = {"tiff.ResolutionUnit": "none", "tiff.XResolution": "1", "tiff.YResolution": "1"}
    with pytest.raises(SlideError, match="no MPP"):
        resolve_mpp("s.tiff", props)


def test_ome_xml_physical_size_with_units():
    desc = '<OME><Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.25"/></Image></OME>'
    result = resolve_mpp("s.ome.tiff", {"tiff.ImageDescription": desc})
    assert result.source == "ome-xml" and result.mpp == pytest.approx(0.25)


def test_pixel_size_microns_in_comment():
    result = resolve_mpp("s.tiff", {"openslide.comment": "<PixelSizeMicrons>0.46</PixelSizeMicrons>"})
    assert result.source == "pixel-size-microns" and result.mpp == pytest.approx(0.46)


@pytest.mark.parametrize(
    "props, expected",
    [
        ({"openslide.mpp-x": "352.77", "openslide.mpp-y": "352.77"}, "implausible MPP 352.77"),
        ({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.5"}, "anisotropic"),
        ({**OPENSLIDE, "openslide.mpp-x": "1.0", "openslide.mpp-y": "1.0", "openslide.objective-power": "40"},
         "inconsistent with objective power 40x"),
        ({}, "no MPP recorded"),
    ],
)
def test_suspicious_mpp_is_refused_with_how_to_override(props, expected):
    with pytest.raises(SlideError) as info:
        resolve_mpp("/data/s1.svs", props)
    message = str(info.value)
    assert message.startswith("/data/s1.svs: ") and expected in message
    assert "--mpp" in message and "\n" not in message


def test_real_scanner_deviations_from_nominal_objective_are_accepted():
    # 3DHistech "20x" scans at 0.243 µm/px, Hamamatsu 40x at 0.2265 µm/px.
    for mpp, objective in (("0.243", "20"), ("0.2265", "40"), ("0.499", "20")):
        props = {"openslide.mpp-x": mpp, "openslide.mpp-y": mpp, "openslide.objective-power": objective}
        assert resolve_mpp("s", props).mpp == pytest.approx(float(mpp))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "x", 500.0])
def test_bad_overrides_are_refused(bad):
    with pytest.raises(SlideError, match="s.svs"):
        resolve_mpp("s.svs", OPENSLIDE, override=bad)
