"""Microns per pixel (MPP): where it came from, and whether to believe it.

Wrong or missing MPP is the most common way a pathology pipeline silently goes wrong: a
slide tiled at the wrong scale gives features from the wrong magnification and nobody
notices. So every MPP here carries its source, and values that look wrong are refused with a
message that says how to override them, rather than used.

Order of trust (first that exists wins):
  1. ``override``        – per-slide override (slide table column ``MPP`` or CLI ``--mpp``)
  2. ``openslide``       – ``openslide.mpp-x/y`` as set by the vendor driver
     (``tiff-resolution`` when OpenSlide only copied generic-TIFF resolution tags)
  3. vendor / TIFF tags OpenSlide did not convert: ``tiff-resolution`` (inch or cm units),
     ``ome-xml`` (``PhysicalSizeX/Y``), ``pixel-size-microns`` (``<PixelSizeMicrons>``)
  4. ``objective-power`` – 10 µm / objective (40× ≈ 0.25 µm/px)
  5. ``default``         – ``TilingSettings.default_mpp``
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

from eagle_index.errors import SlideError

# Outside this range no microscope slide scan exists; typical values are 0.1–1.0 µm/px.
MPP_MIN_UM = 0.05
MPP_MAX_UM = 16.0
# x and y pixel sizes may differ by this relative amount before we refuse (square pixels).
MAX_ANISOTROPY = 0.02
# Nominal MPP at objective power P is 10/P; real scanners differ (e.g. 3DHistech "20×" at
# 0.243 µm/px, Olympus 40× at 0.17), so only a factor beyond this is called inconsistent.
MAX_OBJECTIVE_FACTOR = 2.5

OVERRIDE_HINT = "override it with --mpp X or an MPP column in the slide table"

_UNIT_TO_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass(frozen=True)
class MppResult:
    """A trusted pixel size in µm/px and the name of the metadata it came from."""

    mpp: float
    source: str


def _float(value: object) -> float | None:
    try:
        out = float(str(value).strip().strip('"'))
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _xy(x: float | None, y: float | None) -> tuple[float, float] | None:
    if x is None and y is None:
        return None
    return (x if x is not None else y, y if y is not None else x)  # type: ignore[return-value]


def _tiff_resolution(props: Mapping[str, str]) -> tuple[float, float] | None:
    unit = props.get("tiff.ResolutionUnit", "").strip().lower()
    um_per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    if um_per_unit is None:
        return None
    x_res, y_res = _float(props.get("tiff.XResolution")), _float(props.get("tiff.YResolution"))
    xy = _xy(x_res, y_res)
    return None if xy is None else (um_per_unit / xy[0], um_per_unit / xy[1])


def _ome_xml(props: Mapping[str, str]) -> tuple[float, float] | None:
    text = props.get("tiff.ImageDescription", "")
    if "PhysicalSizeX" not in text:
        return None
    sizes = []
    for axis in ("X", "Y"):
        m = re.search(rf'PhysicalSize{axis}="([^"]+)"', text)
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', text)
        scale = _UNIT_TO_UM.get(unit.group(1) if unit else "µm")
        sizes.append(_float(m.group(1)) * scale if (m and scale and _float(m.group(1))) else None)
    return _xy(*sizes)


def _pixel_size_microns(props: Mapping[str, str]) -> tuple[float, float] | None:
    for key in ("openslide.comment", "tiff.ImageDescription"):
        m = re.search(r"<PixelSizeMicrons>\s*([0-9.eE+-]+)\s*</PixelSizeMicrons>", props.get(key, ""))
        if m and _float(m.group(1)):
            v = _float(m.group(1))
            return (v, v)  # type: ignore[return-value]
    return None


def _recorded_mpp(props: Mapping[str, str]) -> tuple[tuple[float, float], str] | None:
    """The first pixel size the slide's metadata records, with its source name."""
    xy = _xy(_float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y")))
    if xy is not None:
        generic = props.get("openslide.vendor") == "generic-tiff" and _tiff_resolution(props) is not None
        return xy, ("tiff-resolution" if generic else "openslide")
    for source, finder in (("tiff-resolution", _tiff_resolution), ("ome-xml", _ome_xml),
                           ("pixel-size-microns", _pixel_size_microns)):
        xy = finder(props)
        if xy is not None:
            return xy, source
    return None


def objective_power(props: Mapping[str, str]) -> float | None:
    """The nominal objective magnification, if the slide records one."""
    return _float(props.get("openslide.objective-power"))


def _check_range(path: str, mpp: float, what: str) -> None:
    if not (MPP_MIN_UM <= mpp <= MPP_MAX_UM):
        raise SlideError(
            f"{path}: implausible MPP {mpp:.6g} µm/px ({what}); slide scans lie between "
            f"{MPP_MIN_UM} and {MPP_MAX_UM} µm/px (images saved at 72/96 dpi without a scale "
            f"give 352.8/264.6) - if you know the real scale, {OVERRIDE_HINT}"
        )


def resolve_mpp(path: str, props: Mapping[str, str], override: float | None = None,
                default_mpp: float | None = None) -> MppResult:
    """Pick the slide's µm/px by the documented order of trust and sanity-check it.

    Raises SlideError naming the file, the suspicious value and how to override it.
    """
    if override is not None:
        value = _float(override)
        if value is None:
            raise SlideError(f"{path}: MPP override {override!r} is not a positive number")
        _check_range(path, value, "from the override")
        return MppResult(value, "override")

    recorded = _recorded_mpp(props)
    objective = objective_power(props)
    if recorded is not None:
        (mpp_x, mpp_y), source = recorded
        _check_range(path, mpp_x, f"from {source}")
        _check_range(path, mpp_y, f"y, from {source}")
        if abs(mpp_x - mpp_y) / max(mpp_x, mpp_y) > MAX_ANISOTROPY:
            raise SlideError(
                f"{path}: anisotropic pixels, MPP x {mpp_x:.6g} vs y {mpp_y:.6g} µm/px (from "
                f"{source}); tiles would be distorted - if the scale is known, {OVERRIDE_HINT}"
            )
        if objective is not None:
            nominal = 10.0 / objective
            factor = max(mpp_x / nominal, nominal / mpp_x)
            if factor > MAX_OBJECTIVE_FACTOR:
                raise SlideError(
                    f"{path}: MPP {mpp_x:.6g} µm/px (from {source}) is inconsistent with objective "
                    f"power {objective:g}x (expected about {nominal:.3g} µm/px) - {OVERRIDE_HINT}"
                )
        return MppResult((mpp_x + mpp_y) / 2.0, source)

    if objective is not None:
        mpp = 10.0 / objective
        _check_range(path, mpp, f"from objective power {objective:g}x")
        return MppResult(mpp, "objective-power")

    if default_mpp is not None:
        _check_range(path, default_mpp, "the configured default_mpp")
        return MppResult(float(default_mpp), "default")

    raise SlideError(
        f"{path}: no MPP recorded (no openslide.mpp-x, resolution tags or objective power) - "
        f"{OVERRIDE_HINT}, or configure default_mpp"
    )
