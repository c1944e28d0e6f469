"""Limits shared by every front end, so the CLI, the API and the service agree."""

from __future__ import annotations

import re

from eagle_index.errors import InputError

MAX_K = 1000  # neighbours per search: CLI `-k`, API `k`, EagleService.search_*


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k!r}")
    return k


# -- images ------------------------------------------------------------------------------------
# An image query (region search, CLI `--image` or an upload to /api/v1/search/tiles) is decoded whole,
# so its size is checked from the file's header first: at most 64 million pixels (8000 × 8000, about
# 190 MB as RGB). Only the central tiles are then resampled, so the resampled pixels are at most
# 4 × 4 tiles (896 × 896 px) whatever the µm/px. Slides uploaded as plain images (PNG/JPEG) are opened
# whole by the slide reader: they are held to PIL's own hard limit (2 × Image.MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = 64_000_000


class ImageTooLarge(InputError):
    """An image over a pixel limit (a decompression bomb, or simply too large to decode whole)."""


def slide_image_pixels() -> int:
    """The most pixels a plain-image slide may have: what PIL decodes without a DecompressionBombError."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 1 << 62


def _too_large(source: str, width: int, height: int, limit: int) -> InputError:
    return ImageTooLarge(f"{source}: the image is {width} × {height} px ({width * height:,} pixels), over the limit of "
                      f"{limit:,} pixels for images (a decompression bomb, or crop the region you need)")


def open_image(path, source: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS):
    """The image at `path`, opened by PIL (header only: nothing is decoded yet), refused with one InputError
    naming `source` and the limit when it has more than `max_pixels` pixels (PIL's decompression-bomb
    errors and warnings become that error too). The caller closes it (`with open_image(...) as img`)."""
    from PIL import Image, UnidentifiedImageError

    source = source or str(path)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        size = [int(n) for n in re.findall(r"\d+", str(exc))[:1]]
        raise ImageTooLarge(f"{source}: the image has {size[0]:,} pixels, over the limit of {max_pixels:,} pixels for images "
                         "(a decompression bomb, or crop the region you need)" if size else
                         f"{source}: over the limit of {max_pixels:,} pixels for images") from None
    except Image.DecompressionBombWarning:  # raised when warnings are errors: over PIL's soft limit, so over ours
        raise ImageTooLarge(f"{source}: over the limit of {max_pixels:,} pixels for images") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{source}: not a readable image ({exc})") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise _too_large(source, width, height, max_pixels)
    return img


# -- identifiers and names (eagle_index/identifiers.py) ----------------------------------------
# Patient ids, cohort and probe names, label names: at most 200 characters; label values: 1000.
MAX_IDENTIFIER_CHARS = 200
MAX_LABEL_VALUE_CHARS = 1000
