"""Reduced-scale JPEG decoding ("DCT scaling") of a pyramid level read at 2, 4 or 8× the target.

On an Aperio-style pyramid (downsamples 1, 4, 16) of a 0.25 µm/px scan the best level for
2 µm/px tiles is 1.0 µm/px: every tile is a 448 px box shrunk to 224 px. libjpeg-turbo can
decode a JPEG at 1/2, 1/4 or 1/8 of its size in the inverse DCT itself (an 8×8 block
becomes 4×4, 2×2 or 1×1 pixels), which skips most of the decoding work and the resize.

This module does that for the file tiles of one TIFF page, and assembles tile boxes from
them. It is used by the tiling reader (`tiling._Reader`) only where it is valid, decided
once per slide and level (`scaled_level`), else the reader keeps OpenSlide's full decode:

- the setting `TilingSettings.dct_scaled_decode` is on;
- OpenSlide's vendor is "aperio" or "generic-tiff" (plain tiled TIFF pages: no overlaps);
- the box is exactly `scale × tile_px` level pixels for a scale of 2, 4 or 8;
- tifffile finds exactly one tiled, 8-bit, 3-sample, JPEG-compressed (7), RGB or YCbCr page
  of the level's exact size, with tiles a multiple of 8 × scale;
- self-check: one whole file tile of the level, decoded at full scale here, is bit-identical
  to OpenSlide's pixels for it (catches a colour-space or geometry disagreement).

And per tile box: its level origin is a multiple of `scale` (so every output pixel is one
whole scale × scale block of one file tile), the box lies inside the level, and every file
tile under it decodes without a libjpeg warning (`strict`). Any other tile is read by
OpenSlide, so a corrupt or missing file tile gives exactly today's error or pixels.

Streams. A page with JPEGTables stores abbreviated tile streams: the tables (without their
EOI) and the tile (without its SOI) are spliced into one stream. libjpeg guesses the colour
space from markers; where the TIFF says RGB (Aperio "JPEG/RGB") and the stream carries no
JFIF/Adobe marker the component ids are set to 'R', 'G', 'B', which makes libjpeg decode
without a YCbCr transform - what OpenSlide does for photometric RGB. Decoder:
`simplejpeg` (bundled libjpeg-turbo; accurate integer IDCT and smooth chroma upsampling,
the same defaults as OpenSlide's full decode; `strict=True` turns warnings into errors,
as OpenSlide does).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SCALES = (2, 4, 8)
VENDORS = ("aperio", "generic-tiff")
_COMPRESSION_JPEG = 7
_PHOTOMETRIC = {2: "rgb", 6: "ycbcr"}
# start-of-frame markers of 8-bit DCT JPEG (baseline, extended, progressive; Huffman)
_SOF = {0xC0, 0xC1, 0xC2}


class DecodeError(Exception):
    """A file tile this module will not decode (missing, corrupt, unexpected stream)."""


# -- streams ------------------------------------------------------------------------------
def splice(tables: bytes | None, tile: bytes) -> bytes:
    """One complete JPEG stream from a TIFF page's JPEGTables and an abbreviated tile stream."""
    if not tables:
        return tile
    if not (tables[:2] == b"\xff\xd8" and tables[-2:] == b"\xff\xd9" and tile[:2] == b"\xff\xd8"):
        raise DecodeError("JPEGTables or tile stream does not start with SOI / end with EOI")
    return tables[:-2] + tile[2:]


@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    component_ids: tuple[int, ...]
    jfif: bool
    adobe_transform: int | None
    sof_id_offset: int  # byte offset of the first component id in SOF
    sos_id_offsets: tuple[int, ...]  # offsets of the component ids in each SOS header


def parse(stream: bytes) -> StreamInfo:
    """Walk a JPEG's marker segments up to the first SOS (headers only, no entropy data)."""
    if stream[:2] != b"\xff\xd8":
        raise DecodeError("not a JPEG stream (no SOI)")
    pos, n = 2, len(stream)
    width = height = None
    ids: tuple[int, ...] = ()
    jfif, adobe, sof_at = False, None, -1
    while pos + 4 <= n:
        if stream[pos] != 0xFF:
            raise DecodeError(f"bad JPEG marker at byte {pos}")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(stream[pos + 2:pos + 4], "big")
        body = pos + 4
        if length < 2 or pos + 2 + length > n:
            raise DecodeError(f"truncated JPEG segment at byte {pos}")
        if marker == 0xE0 and stream[body:body + 5] == b"JFIF\0":
            jfif = True
        elif marker == 0xEE and stream[body:body + 5] == b"Adobe" and length >= 14:
            adobe = stream[body + 11]
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF or stream[body] != 8:
                raise DecodeError(f"unsupported JPEG frame (SOF 0x{marker:02X}, precision {stream[body]})")
            height = int.from_bytes(stream[body + 1:body + 3], "big")
            width = int.from_bytes(stream[body + 3:body + 5], "big")
            count = stream[body + 5]
            sof_at = body + 6
            ids = tuple(stream[sof_at + 3 * i] for i in range(count))
        elif marker == 0xDA:
            if width is None:
                raise DecodeError("JPEG scan before its frame header")
            count = stream[body]
            return StreamInfo(width, height, ids, jfif, adobe, sof_at,
                              tuple(body + 1 + 2 * i for i in range(count)))
        pos += 2 + length
    raise DecodeError("JPEG stream has no scan")


_RGB_IDS = (82, 71, 66)  # 'R', 'G', 'B': libjpeg's cue for an untransformed RGB stream


def as_colour_space(stream: bytes, info: StreamInfo, rgb_data: bool) -> bytes:
    """The stream with the colour space libjpeg will infer made to match the TIFF's photometric."""
    if len(info.component_ids) != 3:
        raise DecodeError(f"JPEG has {len(info.component_ids)} components, expected 3")
    if info.jfif:
        guessed_rgb = False
    elif info.adobe_transform is not None:
        guessed_rgb = info.adobe_transform == 0
    else:
        guessed_rgb = info.component_ids == _RGB_IDS
    if guessed_rgb == rgb_data:
        return stream
    if info.jfif or info.adobe_transform is not None or not rgb_data:
        raise DecodeError("JPEG colour-space markers contradict the TIFF photometric")
    patched = bytearray(stream)
    mapping = dict(zip(info.component_ids, _RGB_IDS))
    for k in range(3):
        patched[info.sof_id_offset + 3 * k] = _RGB_IDS[k]
    for at in info.sos_id_offsets:
        if patched[at] not in mapping:
            raise DecodeError("JPEG scan names an unknown component")
        patched[at] = mapping[patched[at]]
    return bytes(patched)


def decode(stream: bytes, scale: int, expect: tuple[int, int], rgb_data: bool) -> np.ndarray:
    """RGB uint8 (h/scale, w/scale, 3) of a complete JPEG stream of `expect` = (w, h) pixels."""
    import simplejpeg

    info = parse(stream)
    if (info.width, info.height) != expect:
        raise DecodeError(f"JPEG is {info.width}x{info.height}, the TIFF tile is {expect[0]}x{expect[1]}")
    stream = as_colour_space(stream, info, rgb_data)
    out_w, out_h = expect[0] // scale, expect[1] // scale
    try:
        pixels = simplejpeg.decode_jpeg(stream, colorspace="RGB", fastdct=False, fastupsample=False,
                                        min_width=out_w, min_height=out_h, min_factor=scale, strict=True)
    except Exception as exc:  # ValueError for corrupt data and for libjpeg warnings (strict)
        raise DecodeError(str(exc)) from exc
    if pixels.shape != (out_h, out_w, 3):
        raise DecodeError(f"decoded {pixels.shape}, expected {(out_h, out_w, 3)}")
    return pixels


# -- one pyramid level --------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ScaledLevel:
    """The JPEG file tiles of one TIFF page, decodable at 1/scale."""

    path: Path
    scale: int
    width: int  # level pixels
    height: int
    tile_w: int
    tile_h: int
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes | None
    rgb_data: bool  # photometric RGB: the JPEG holds RGB, no YCbCr transform

    @property
    def across(self) -> int:
        return -(-self.width // self.tile_w)

    def covers(self, lx: int, ly: int, box: int) -> bool:
        """Whether the box at level origin (lx, ly) can be read at 1/scale here."""
        s = self.scale
        return lx % s == 0 and ly % s == 0 and lx >= 0 and ly >= 0 and lx + box <= self.width and ly + box <= self.height

    def raw(self, fd: int, index: int) -> bytes:
        count = int(self.counts[index])
        if count <= 0:
            raise DecodeError(f"file tile {index} is missing")
        data = os.pread(fd, count, int(self.offsets[index]))
        if len(data) != count:
            raise DecodeError(f"file tile {index} is truncated")
        return data

    def decode_tile(self, fd: int, index: int, scale: int | None = None) -> np.ndarray:
        stream = splice(self.tables, self.raw(fd, index))
        return decode(stream, scale or self.scale, (self.tile_w, self.tile_h), self.rgb_data)

    def read_box(self, fd: int, lx: int, ly: int, box: int, cache: dict) -> np.ndarray:
        """The box at level origin (lx, ly), side `box` level px, as (box/scale)² RGB pixels.

        `cache` maps file-tile index -> decoded pixels or the DecodeError it raised (shared by
        the boxes of one read job). Raises DecodeError when a file tile under the box fails.
        """
        s, tw, th = self.scale, self.tile_w, self.tile_h
        side = box // s
        out = np.empty((side, side, 3), np.uint8)
        for ty in range(ly // th, (ly + box - 1) // th + 1):
            for tx in range(lx // tw, (lx + box - 1) // tw + 1):
                index = ty * self.across + tx
                if index not in cache:
                    try:
                        cache[index] = self.decode_tile(fd, index)
                    except (DecodeError, OSError) as exc:
                        cache[index] = DecodeError(str(exc))
                pixels = cache[index]
                if isinstance(pixels, DecodeError):
                    raise pixels
                # overlap of the box and this file tile, in level px
                x0, x1 = max(lx, tx * tw), min(lx + box, (tx + 1) * tw)
                y0, y1 = max(ly, ty * th), min(ly + box, (ty + 1) * th)
                out[(y0 - ly) // s:(y1 - ly) // s, (x0 - lx) // s:(x1 - lx) // s] = \
                    pixels[(y0 - ty * th) // s:(y1 - ty * th) // s, (x0 - tx * tw) // s:(x1 - tx * tw) // s]
        return out


def _open_level(slide, level: int, scale: int) -> ScaledLevel | None:
    """The level's TIFF page as a ScaledLevel, or None (with the reason logged) when not valid."""
    import tifffile

    width, height = slide.level_dimensions[level]
    try:
        with tifffile.TiffFile(slide.path) as tif:
            pages = [p for p in tif.pages if p.is_tiled and tuple(p.shape[:2]) == (height, width)]
            if len(pages) != 1:
                return _no(slide, level, f"{len(pages)} tiled TIFF pages of {width}x{height}")
            page = pages[0]
            if page.compression != _COMPRESSION_JPEG or int(page.photometric) not in _PHOTOMETRIC:
                return _no(slide, level, f"compression {int(page.compression)}, photometric {int(page.photometric)}")
            if page.samplesperpixel != 3 or page.bitspersample != 8 or int(page.planarconfig) != 1 or page.tiledepth != 1:
                return _no(slide, level, "not 8-bit contiguous RGB tiles")
            if page.tilewidth % (8 * scale) or page.tilelength % (8 * scale):
                return _no(slide, level, f"tile {page.tilewidth}x{page.tilelength} not a multiple of {8 * scale}")
            n_tiles = -(-width // page.tilewidth) * -(-height // page.tilelength)
            if len(page.dataoffsets) != n_tiles:
                return _no(slide, level, "unexpected tile count")
            found = ScaledLevel(path=Path(slide.path), scale=scale, width=width, height=height,
                                tile_w=page.tilewidth, tile_h=page.tilelength,
                                offsets=np.asarray(page.dataoffsets, np.int64),
                                counts=np.asarray(page.databytecounts, np.int64),
                                tables=bytes(page.jpegtables) if page.jpegtables else None,
                                rgb_data=int(page.photometric) == 2)
    except Exception as exc:  # not a TIFF tifffile can read: OpenSlide stays the reader
        return _no(slide, level, f"tifffile: {exc}")
    return found if _self_check(slide, level, found) else None


def _self_check(slide, level: int, found: ScaledLevel) -> bool:
    """One whole file tile near the level's centre: our full-scale decode == OpenSlide's."""
    tx = max(0, min(found.across // 2, found.width // found.tile_w - 1))
    ty = max(0, min((found.height // found.tile_h) // 2, found.height // found.tile_h - 1))
    if (tx + 1) * found.tile_w > found.width or (ty + 1) * found.tile_h > found.height:
        return bool(_no(slide, level, "level smaller than one file tile"))
    down = slide.level_downsamples[level]
    try:
        with open(found.path, "rb") as handle:
            ours = found.decode_tile(handle.fileno(), ty * found.across + tx, scale=1)
        theirs = slide.read_rgb((int(round(tx * found.tile_w * down)), int(round(ty * found.tile_h * down))),
                                level, (found.tile_w, found.tile_h))
    except Exception as exc:
        return bool(_no(slide, level, f"self-check could not decode: {exc}"))
    if not np.array_equal(ours, theirs):
        return bool(_no(slide, level, "self-check: full-scale decode differs from OpenSlide's"))
    return True


def _no(slide, level: int, why: str) -> None:
    log.debug("%s: level %d read in full (no DCT scaling): %s", slide.path, level, why)
    return None


_cache: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def scaled_level(slide, level: int, box_px: int, tile_px: int) -> ScaledLevel | None:
    """The DCT-scaled reader of `level` for boxes of `box_px` -> `tile_px`, or None where not valid.

    Decided once per open slide (cached); the caller checks the setting.
    """
    if slide.format not in VENDORS or box_px % tile_px or box_px // tile_px not in SCALES:
        return None
    scale = box_px // tile_px
    key = (level, scale)
    with _cache_lock:
        per_slide = _cache.setdefault(slide, {})
        if key not in per_slide:
            per_slide[key] = _open_level(slide, level, scale)
        return per_slide[key]
