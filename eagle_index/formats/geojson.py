"""QuPath GeoJSON: annotations in and out, and region-search hits as a FeatureCollection QuPath opens.

Layout (what QuPath 0.3-0.5 writes with "Export objects as GeoJSON", and what it imports):
- a FeatureCollection `{"type": "FeatureCollection", "features": [...]}`, or the bare list of
  features QuPath writes when "Pretty JSON"/feature collection is off, or one Feature;
- each Feature: `{"type": "Feature", "id": "<uuid>", "geometry": {...}, "properties": {...}}`;
  `properties.objectType` ("annotation", "detection", ...), `properties.name`,
  `properties.classification` = `{"name": "Tumor", "color": [r, g, b]}` (QuPath 0.2 wrote
  `"colorRGB": <packed int>` instead), `properties.color` = `[r, g, b]` for unclassified objects,
  `properties.measurements`, `isLocked`, ...;
- geometry in the image's level-0 pixels (x right, y down): Polygon (outer ring, then holes;
  rings closed), MultiPolygon, Point / MultiPoint (QuPath's points annotations), LineString.
  QuPath has no rectangle type in GeoJSON: a rectangle is a Polygon of one closed 5-position,
  axis-aligned ring (here: shape "rectangle").

Round trip. A feature's properties are kept as they were read; an export writes them back,
changing only what was edited (name, class, colour), and the geometry as it was (numbers
unchanged), so exporting what was imported gives QuPath the same features.

Errors. A bad file is one `InputError` naming the file, the feature (`features[3] ("Tumour 1")`)
and what is wrong with it.

Pure functions: no catalog, no slides.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eagle_index.errors import InputError

GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
AREA_TYPES = ("Polygon", "MultiPolygon")
HIT_CLASS = "eagle-hit"
HIT_COLOR = "#ff8c00"
MAX_FILE_BYTES = 512 << 20  # a GeoJSON larger than this is refused before it is read


@dataclass(frozen=True)
class ParsedFeature:
    """One feature of a GeoJSON file, checked."""

    index: int
    geometry: dict
    shape: str
    name: str | None
    class_name: str | None
    color: str | None  # "#rrggbb"
    properties: dict | None  # the feature's properties as read (None: it had none)
    feature_id: str | None


# -- colours -------------------------------------------------------------------------------------
def rgb_to_hex(rgb) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def hex_to_rgb(color: str) -> list[int]:
    return [int(color[i:i + 2], 16) for i in (1, 3, 5)]


def normalize_color(value, what: str = "color") -> str | None:
    """A colour as "#rrggbb" from "#rrggbb", "#rgb", [r, g, b] or None; anything else: InputError."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if len(text) == 4 and text.startswith("#"):
            text = "#" + "".join(c * 2 for c in text[1:])
        if len(text) == 7 and text.startswith("#") and all(c in "0123456789abcdef" for c in text[1:]):
            return text
    elif _is_rgb(value):
        return rgb_to_hex(value)
    raise InputError(f"{what} must be #rrggbb or [r, g, b] (0-255), got {str(value)[:40]!r}")


def _is_rgb(value) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value))


def _packed_to_hex(value: int) -> str:
    value &= 0xFFFFFF  # QuPath 0.2's colorRGB: a packed (A)RGB int, often negative
    return f"#{value:06x}"


def _class_color(classification) -> str | None:
    if not isinstance(classification, dict):
        return None
    if _is_rgb(classification.get("color")):
        return rgb_to_hex(classification["color"])
    packed = classification.get("colorRGB")
    if isinstance(packed, int) and not isinstance(packed, bool):
        return _packed_to_hex(packed)
    return None


def _object_color(properties: dict) -> str | None:
    return rgb_to_hex(properties["color"]) if _is_rgb(properties.get("color")) else None


# -- geometry --------------------------------------------------------------------------------------
def _position(value, where: str) -> None:
    if not (isinstance(value, list) and len(value) in (2, 3)):
        raise InputError(f"{where}: a position must be [x, y], got {json.dumps(value)[:60]}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{where}: coordinates must be finite numbers, got {json.dumps(value)[:60]}")


def _positions(value, where: str, minimum: int) -> None:
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a list of positions")
    if len(value) < minimum:
        raise InputError(f"{where}: needs at least {minimum} positions, has {len(value)}")
    for p in value:
        _position(p, where)


def _polygon(rings, where: str) -> None:
    if not isinstance(rings, list) or not rings:
        raise InputError(f"{where}: a Polygon needs at least one ring (the outer boundary)")
    for i, ring in enumerate(rings):
        name = f"{where} ring {i}" + (" (outer)" if i == 0 else " (hole)")
        _positions(ring, name, 4)
        if ring[0][:2] != ring[-1][:2]:
            raise InputError(f"{name}: not closed (its first position {ring[0]} differs from its last {ring[-1]})")


def check_geometry(geometry, where: str = "geometry") -> str:
    """Check a GeoJSON geometry; its shape name (rectangle, polygon, multipolygon, point, multipoint, line, multiline)."""
    if not isinstance(geometry, dict):
        raise InputError(f"{where}: has no geometry object" if geometry is None else f"{where}: geometry must be an object")
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        raise InputError(f"{where}: GeometryCollection is not supported (one geometry per feature)")
    if kind not in GEOMETRY_TYPES:
        raise InputError(f"{where}: geometry type {str(kind)[:40]!r} is not one of {', '.join(GEOMETRY_TYPES)}")
    coords = geometry.get("coordinates")
    where = f"{where}: {kind}"
    if kind == "Point":
        _position(coords, where)
        return "point"
    if kind == "MultiPoint":
        _positions(coords, where, 1)
        return "multipoint"
    if kind == "LineString":
        _positions(coords, where, 2)
        return "line"
    if kind == "MultiLineString":
        if not isinstance(coords, list) or not coords:
            raise InputError(f"{where}: needs at least one line")
        for i, line in enumerate(coords):
            _positions(line, f"{where} line {i}", 2)
        return "multiline"
    if kind == "Polygon":
        _polygon(coords, where)
        return "rectangle" if is_rectangle(geometry) else "polygon"
    if not isinstance(coords, list) or not coords:
        raise InputError(f"{where}: needs at least one polygon")
    for i, rings in enumerate(coords):
        _polygon(rings, f"{where} polygon {i}")
    return "multipolygon"


def is_rectangle(geometry: dict) -> bool:
    """A Polygon of one closed, axis-aligned 5-position ring of positive size: what QuPath writes for a rectangle."""
    if geometry.get("type") != "Polygon" or len(geometry["coordinates"]) != 1:
        return False
    ring = [tuple(p[:2]) for p in geometry["coordinates"][0]]
    if len(ring) != 5 or ring[0] != ring[-1]:
        return False
    xs, ys = {p[0] for p in ring}, {p[1] for p in ring}
    if len(xs) != 2 or len(ys) != 2:
        return False
    return all((a[0] == b[0]) != (a[1] == b[1]) for a, b in zip(ring, ring[1:]))


def rectangle(x: float, y: float, w: float, h: float) -> dict:
    """A rectangle as QuPath writes it: one closed ring from the top-left corner, clockwise on screen."""
    return {"type": "Polygon", "coordinates": [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]]}


def _all_positions(geometry: dict) -> list:
    kind, coords = geometry["type"], geometry["coordinates"]
    if kind == "Point":
        return [coords]
    if kind in ("MultiPoint", "LineString"):
        return list(coords)
    if kind in ("MultiLineString", "Polygon"):
        return [p for part in coords for p in part]
    return [p for polygon in coords for ring in polygon for p in ring]


def bbox(geometry: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a checked geometry, in its own units."""
    pts = _all_positions(geometry)
    xs, ys = [float(p[0]) for p in pts], [float(p[1]) for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def points_of(geometry: dict) -> list[tuple[float, float]]:
    """The positions of a Point or MultiPoint."""
    return [(float(p[0]), float(p[1])) for p in _all_positions(geometry)] if geometry["type"] in ("Point", "MultiPoint") else []


def contains(geometry: dict, xs, ys) -> np.ndarray:
    """Which points (xs, ys) lie inside an area geometry (Polygon with holes, MultiPolygon): even-odd rule per
    polygon (a point in a hole is outside), union over a MultiPolygon's polygons. Other geometries: none."""
    xs = np.asarray(xs, dtype=np.float64).reshape(-1)
    ys = np.asarray(ys, dtype=np.float64).reshape(-1)
    out = np.zeros(len(xs), dtype=bool)
    if geometry["type"] not in AREA_TYPES:
        return out
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    for rings in polygons:
        inside = np.zeros(len(xs), dtype=bool)
        for ring in rings:
            pts = np.asarray([p[:2] for p in ring], dtype=np.float64)
            x1, y1, x2, y2 = pts[:-1, 0], pts[:-1, 1], pts[1:, 0], pts[1:, 1]
            for a, b, c, d in zip(x1, y1, x2, y2):
                if b == d:
                    continue
                crosses = (b > ys) != (d > ys)
                x_at = a + (ys - b) * (c - a) / (d - b)
                inside ^= crosses & (xs < x_at)
        out |= inside
    return out


# -- reading -----------------------------------------------------------------------------------------
def read(path: Path) -> list[ParsedFeature]:
    """The features of a GeoJSON file (FeatureCollection, bare feature list, or one Feature), checked."""
    path = Path(path)
    if not path.is_file():  # regular files only: a FIFO is never opened
        raise InputError(f"{path}: not a regular file" if path.exists() else f"{path}: file not found")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    return loads(path.read_bytes(), path.name)


def loads(data: bytes | str, source: str) -> list[ParsedFeature]:
    """Parse GeoJSON text; `source` names it in messages (a file name)."""
    try:
        decoded = json.loads(data)
    except UnicodeDecodeError:
        raise InputError(f"{source}: not a text (UTF-8) file, so not GeoJSON") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply") from None
    return parse(decoded, source)


def parse(data, source: str) -> list[ParsedFeature]:
    """The features of decoded GeoJSON, checked; any problem is one InputError naming `source` and the feature."""
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise InputError(f"{source}: a FeatureCollection needs a list of features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and data.get("type") in GEOMETRY_TYPES:
        raise InputError(f"{source}: a bare {data['type']} geometry, not a Feature: wrap it as a Feature (QuPath exports Features)")
    else:
        raise InputError(f"{source}: not GeoJSON features (expected a FeatureCollection, a list of Features, or a Feature)")
    return [parse_feature(f, i, source) for i, f in enumerate(features)]


def parse_feature(feature, index: int, source: str) -> ParsedFeature:
    where = f"{source}: features[{index}]"
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise InputError(f"{where}: not a Feature object")
    props = feature.get("properties")
    if props is not None and not isinstance(props, dict):
        raise InputError(f"{where}: properties must be an object")
    name = props.get("name") if props else None
    if name is not None and not isinstance(name, str):
        raise InputError(f"{where}: properties.name must be a string")
    if name:
        where += f" ({name[:60]!r})"
    class_name, color = None, None
    if props:
        classification = props.get("classification")
        if isinstance(classification, str):
            class_name = classification
        elif isinstance(classification, dict):
            class_name = classification.get("name")
            if not isinstance(class_name, str) or not class_name.strip():
                raise InputError(f"{where}: properties.classification.name must be a non-empty string")
            if "color" in classification and not _is_rgb(classification["color"]):
                raise InputError(f"{where}: properties.classification.color must be [r, g, b] (0-255), "
                                 f"got {json.dumps(classification['color'])[:40]}")
            color = _class_color(classification)
        elif classification is not None:
            raise InputError(f"{where}: properties.classification must be an object {{name, color}}")
        if color is None:
            color = _object_color(props)
    shape = check_geometry(feature.get("geometry"), where)
    fid = feature.get("id")
    return ParsedFeature(index, feature["geometry"], shape, name or None, class_name, color,
                         dict(props) if props is not None else None, None if fid is None else str(fid))


# -- writing -------------------------------------------------------------------------------------------
def export_properties(properties: dict | None, name: str | None, class_name: str | None, color: str | None) -> dict:
    """The feature's properties for an export: as read, with name, class and colour as they are now."""
    props = dict(properties) if properties is not None else {"objectType": "annotation"}
    if name is None:
        props.pop("name", None)
    else:
        props["name"] = name
    old = props.get("classification")
    if class_name is None:
        props.pop("classification", None)
        if color is None:
            props.pop("color", None)
        elif _object_color(props) != color:
            props["color"] = hex_to_rgb(color)
        return props
    old_name = old if isinstance(old, str) else old.get("name") if isinstance(old, dict) else None
    old_color = _class_color(old)
    same_color = old_color == color or (old_color is None and _object_color(props) == color)
    if not (old_name == class_name and same_color):
        props["classification"] = {"name": class_name, **({"color": hex_to_rgb(color)} if color else {})}
    return props


def feature(geometry: dict, properties: dict, feature_id: str | None = None) -> dict:
    out: dict = {"type": "Feature"}
    if feature_id is not None:
        out["id"] = feature_id
    out["geometry"] = geometry
    out["properties"] = properties
    return out


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def hits_collection(result: dict) -> dict:
    """A region-search result (its `as_dict()`) as a FeatureCollection QuPath opens: each hit tile a
    rectangle in its slide's level-0 pixels, class "eagle-hit", with score, patient, slide and rank
    (also as QuPath measurements). Tiles of slides without a known µm/px have no pixel position and
    are left out."""
    features = []
    rank = 0
    for group in result.get("patients", []):
        for tile in group.get("tiles", []):
            rank += 1
            x, y, size = tile.get("x_px"), tile.get("y_px"), tile.get("size_px")
            if x is None or y is None or not size:
                continue
            props = {
                "objectType": "annotation",
                "name": f"#{rank} {group['patient']} {tile['score']:.3f}",
                "classification": {"name": HIT_CLASS, "color": hex_to_rgb(HIT_COLOR)},
                "score": tile["score"], "patient": group["patient"], "slide": tile["slide"], "slide_id": tile.get("slide_id"),
                "rank": rank, "x_um": tile["x_um"], "y_um": tile["y_um"],
                "measurements": {"score": tile["score"], "rank": rank},
            }
            features.append(feature(rectangle(x, y, size, size), props))
    return feature_collection(features)


def dumps(collection: dict | list) -> str:
    return json.dumps(collection, indent=1, ensure_ascii=False) + "\n"
