"""Issue 24 item 1: image inputs cannot make the server allocate gigabytes.

A tiny image at a coarse µm/px was resampled whole before its central tiles were cropped (a 600 × 600
PNG at mpp=100 asked for a 30000 × 30000 px resample); now only the crop is resampled (at most 4 × 4
tiles). Images over the pixel limit (limits.MAX_IMAGE_PIXELS, checked from the header before any
decoding) and PIL decompression bombs are one named 400 (API) / InputError (service, CLI) for region
queries, slide uploads and upload thumbnails; never a 500.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from test_web_fixtures import archive_copy, error_of


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height RGB pixels but holds a few bytes of data (what a bomb's header says)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def _jpeg_header(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare width × height."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = {"png-30000.png": _png_header(30000, 30000), "jpeg-16000.jpg": _jpeg_header(16000, 16000),
         "png-10000.png": _png_header(10000, 10000)}  # 100 M px: under PIL's hard limit, over ours


# -- the resample is bounded by the tiles, not by the image's µm size -----------------------------
def test_small_image_at_coarse_mpp_resamples_only_its_central_tiles(monkeypatch):
    import cv2

    from eagle_index.region_search import image_tiles

    asked = []
    real = cv2.resize

    def spy(src, dsize, *args, **kwargs):
        asked.append((tuple(src.shape[:2]), tuple(dsize)))
        if dsize[0] * dsize[1] > 4 * 224 * 4 * 224:  # fail before allocating (the old code asked for 30000 x 30000)
            raise AssertionError(f"resample to {dsize} px")
        return real(src, dsize, *args, **kwargs)

    monkeypatch.setattr(cv2, "resize", spy)
    rgb = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    tiles, facts = image_tiles(rgb, 100.0, 2.0, 224, "q.png")
    assert tiles.shape == (16, 224, 224, 3) and facts["grid"] == [4, 4]
    assert asked and all(d[0] * d[1] <= 896 * 896 for _, d in asked)
    assert all(s[0] <= 20 and s[1] <= 20 for s, _ in asked)  # 4 tiles of 448 µm at 100 µm/px: about 18 × 18 source px


def test_crop_first_gives_the_same_tiles_as_resampling_the_whole_image():
    """A legitimate image (2000 × 2000 px at 1 µm/px) gives the very tiles the old resample-then-crop gave."""
    import cv2

    from eagle_index.region_search import image_tiles
    from eagle_index.slides.tiling import RESIZE_FILTER

    rgb = np.random.default_rng(1).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
    tiles, facts = image_tiles(rgb, 1.0, 2.0, 224, "q.png")
    whole = cv2.resize(rgb, (1000, 1000), interpolation=RESIZE_FILTER)
    x0 = (1000 - 896) // 2
    expected = np.stack([whole[x0 + r * 224:x0 + (r + 1) * 224, x0 + c * 224:x0 + (c + 1) * 224] for r in range(4) for c in range(4)])
    assert facts["grid"] == [4, 4] and np.array_equal(tiles, expected)
    same = np.random.default_rng(2).integers(0, 255, (500, 700, 3), dtype=np.uint8)  # already 2 µm/px: a plain crop
    tiles, facts = image_tiles(same, 2.0, 2.0, 224, "q.png")
    assert facts["grid"] == [3, 2] and np.array_equal(tiles[0], same[26:250, 14:238])


# -- bombs and oversized images: named 400s ---------------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    with EagleService(Settings(data_dir=archive_copy(tmp_path_factory, "hardening-images"), models="tiny", device="cpu")) as svc:
        yield svc


def _client(service):
    from web import create_app

    return create_app(None, service=service, owner={"role": "serve"}).test_client()


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_region_query_bombs_are_a_named_400(service, tmp_path, name):
    from eagle_index.errors import InputError
    from eagle_index.limits import MAX_IMAGE_PIXELS

    client = _client(service)
    response = client.post("/api/v1/search/tiles", data={"file": (io.BytesIO(BOMBS[name]), name), "mpp": "0.5"},
                           content_type="multipart/form-data")
    message = error_of(response, 400, "file")
    assert message.startswith(name) and f"{MAX_IMAGE_PIXELS:,}" in message and "eagle-region" not in message
    path = tmp_path / name  # the service (and so the CLI's one error line) says the same; the file records no dpi
    path.write_bytes(BOMBS[name])
    with pytest.raises(InputError, match="over the limit of"):
        service.regions.search({}, image=path, mpp=0.5)
    with pytest.raises(InputError, match="over the limit of"):
        service.regions.search({}, image=path)  # reading the recorded resolution opens the header only


def test_tiny_image_at_mpp_100_is_answered(service):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(buffer, format="PNG")
    response = _client(service).post("/api/v1/search/tiles", data={"file": (io.BytesIO(buffer.getvalue()), "small.png"),
                                                                   "mpp": "100", "k": "2"}, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["query"]["grid"] == [4, 4]


@pytest.mark.parametrize("name", ["png-30000.png", "jpeg-16000.jpg"])
def test_slide_upload_bombs_are_a_named_400_and_not_kept(service, name):
    client = _client(service)
    uploads = Path(service.settings.data_dir) / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    response = client.post("/api/v1/search/upload", data={"file": (io.BytesIO(BOMBS[name]), name)}, content_type="multipart/form-data")
    message = error_of(response, 400, "file")
    assert message.startswith(name) and "over the limit of" in message
    assert set(uploads.iterdir()) == before


def test_thumbnail_of_a_bomb_is_a_400(service):
    """A bomb already stored as an upload (before this check existed) is a 400 for its thumbnail and tiles, not a 500."""
    uploads = Path(service.settings.data_dir) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    upload_id = "ab" * 16
    (uploads / f"{upload_id}.png").write_bytes(BOMBS["png-30000.png"])
    client = _client(service)
    response = client.get(f"/api/v1/uploads/{upload_id}/thumbnail.png")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    response = client.get(f"/api/v1/uploads/{upload_id}/tile.png?x_um=0&y_um=0")
    assert response.status_code == 400, response.get_data(as_text=True)


# -- the memory a server spends on an image query is bounded (issue 24, "done when") -------------------
RSS_SCRIPT = r"""
import io, json, resource, sys
import numpy as np
from PIL import Image
from eagle_index.config import Settings
from eagle_index.service import EagleService
from web import create_app

data, bombs = sys.argv[1], json.loads(sys.argv[2])

def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()

with EagleService(Settings(data_dir=data, models="tiny", device="cpu")) as svc:
    client = create_app(None, service=svc, owner={"role": "serve"}).test_client()
    def region(name, payload, mpp):
        return client.post("/api/v1/search/tiles", data={"file": (io.BytesIO(payload), name), "mpp": str(mpp), "k": "2"},
                           content_type="multipart/form-data").status_code
    noise = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    warm = region("warm.png", png(noise), 2.0)  # models, index and catalog loaded before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    codes = {"warm": warm}
    for name, path in bombs.items():
        payload = open(path, "rb").read()
        codes[name] = region(name, payload, 0.5)
        if name == "png-10000.png":
            continue  # 100 M px is a plain-image slide upload may legally be (under PIL's bomb limit): it is embedded
        codes["upload " + name] = client.post("/api/v1/search/upload", data={"file": (io.BytesIO(payload), name)},
                                              content_type="multipart/form-data").status_code
    codes["600px at 40 um/px"] = region("small.png", png(noise), 40)     # 12,000 x 12,000 px if resampled whole
    codes["2000px at 100 um/px"] = region("flat.png", png(np.full((2000, 2000, 3), 200, np.uint8)), 100)  # 100,000 x 100,000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"codes": codes, "delta_mb": (peak - base) / 1024}))
"""


def test_image_queries_and_bombs_stay_within_the_memory_cap(tmp_path_factory, tmp_path):
    """A real process answers every bomb and the tiny-image/coarse-µm/px queries of the issue; its peak RSS
    grows by less than the pixel limit's decoded size (limits.MAX_IMAGE_PIXELS x 3 bytes), the cap the
    crop-first resample and the header check keep (whole-image resampling asked for 0.4 to 30 GB)."""
    import json
    import subprocess
    import sys

    from eagle_index.limits import MAX_IMAGE_PIXELS

    data = archive_copy(tmp_path_factory, "rss")
    paths = {}
    for name, payload in BOMBS.items():
        paths[name] = str(tmp_path / name)
        (tmp_path / name).write_bytes(payload)
    run = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(data), json.dumps(paths)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    codes = out["codes"]
    assert codes.pop("warm") == 200 and codes.pop("600px at 40 um/px") == 200 and codes.pop("2000px at 100 um/px") == 200
    assert set(codes.values()) == {400}, codes
    cap_mb = MAX_IMAGE_PIXELS * 3 / 2**20
    assert out["delta_mb"] < cap_mb, out
