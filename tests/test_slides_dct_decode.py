"""DCT-scaled JPEG decoding (`TilingSettings.dct_scaled_decode`): parity with the full decode
+ area filter where it is used, and exactly today's pixels and errors where it is not."""

import re

import numpy as np
import pytest
import tifffile

from eagle_index.config import Settings, TilingSettings
from eagle_index.errors import SlideError
from eagle_index.slides import (
    candidate_grid,
    full_grid,
    iter_tile_batches,
    keep_tiles,
    open_slide,
    read_tiles,
    tissue_grid,
)
from eagle_index.slides.jpeg_scaled import DecodeError, decode, scaled_level, splice
from slide_fixtures import write_image_slide, write_pyramidal_tiff

ON = TilingSettings(dct_scaled_decode=True, read_threads=2)
OFF = TilingSettings(dct_scaled_decode=False, read_threads=2)
# Aperio-like pyramid (1, 4, 16) of a 0.25 µm/px scan: tiles come from the 1.0 µm/px level, a
# 448 px box per 224 px tile, i.e. DCT scale 1/2. Boxes deliberately not on the tile grid, so
# border tiles carry a little tissue (edge ratios near the Canny threshold).
SIZE_PX = (10_000, 6_400)  # 2500 × 1600 µm: 5 × 3 complete tiles
BOXES_UM = [(300.0, 500.0, 1500.0, 900.0), (2000.0, 100.0, 380.0, 1300.0)]
SHARED_SVS = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/openslide-fixtures/small.svs"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dct")
    out = {}
    for texture, quality in (("cells", 70), ("fat", 90)):
        out[texture] = write_pyramidal_tiff(folder / f"{texture}.tiff", mpp=0.25, size=SIZE_PX, tissue_boxes_um=BOXES_UM,
                                            level_step=4, texture=texture, quality=quality)
    out["svs"] = write_pyramidal_tiff(folder / "aperio.svs", mpp=0.25, size=SIZE_PX, tissue_boxes_um=BOXES_UM,
                                      level_step=4, objective=40, quality=80)
    return out


def _all_tiles(path, settings, mpp_override=None):
    with open_slide(path, mpp_override=mpp_override, settings=settings) as slide:
        grid = full_grid(slide, settings)
        images = np.concatenate([b.images for b in iter_tile_batches(slide, grid, 16, settings)])
        used = scaled_level(slide, grid.level, grid.level_box_px, grid.tile_px) is not None
    return grid, images, used


@pytest.fixture(scope="module")
def ctranspath():
    from eagle_index.models import load_models

    return load_models(Settings(models="tiny", device="cpu"), only=("ctranspath",)).ctranspath


def _cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("key", ["cells", "fat", "svs"])
def test_parity_with_full_decode(slides, ctranspath, key):
    grid, full, used_off = _all_tiles(slides[key].path, OFF)
    grid_on, dct, used = _all_tiles(slides[key].path, ON)
    assert used and len(grid) == len(grid_on) == 15
    assert not np.array_equal(full, dct)  # the DCT path really ran
    # identical Canny (tissue/background) decision on every tile of the slide
    assert np.array_equal(keep_tiles(full, OFF), keep_tiles(dct, ON))
    assert 0 < keep_tiles(full, OFF).sum() < len(full)
    # pixels: close everywhere; CTransPath (tiny) features: cosine >= 0.999 on every tile
    assert np.abs(full.astype(int) - dct).max() <= 24
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)  # noqa: E731
    assert _cosine(flat(full), flat(dct)).min() >= 0.9999
    assert _cosine(ctranspath.encode(full), ctranspath.encode(dct)).min() >= 0.999


def test_grid_and_tissue_tiles_unchanged(slides):
    with open_slide(slides["fat"].path, settings=ON) as slide:
        cand_on, tissue_on = candidate_grid(slide, ON), tissue_grid(slide, ON)
    with open_slide(slides["fat"].path, settings=OFF) as slide:
        cand_off, tissue_off = candidate_grid(slide, OFF), tissue_grid(slide, OFF)
    for a, b in ((cand_on, cand_off), (tissue_on, tissue_off)):
        assert np.array_equal(a.x_px, b.x_px) and np.array_equal(a.y_px, b.y_px)
        assert (a.level, a.level_box_px, a.n_cols, a.n_rows) == (b.level, b.level_box_px, b.n_cols, b.n_rows)


def test_read_tiles_gives_the_grid_readers_exact_pixels(slides):
    grid, images, used = _all_tiles(slides["cells"].path, ON)
    assert used
    pick = np.array([0, 6, 7, len(grid) - 1])
    with open_slide(slides["cells"].path, settings=ON) as slide:
        again = read_tiles(slide, grid.x_um[pick], grid.y_um[pick], ON)
    assert np.array_equal(again, images[pick])


def _same_either_way(path, mpp_override=None):
    grid, off, _ = _all_tiles(path, OFF, mpp_override)
    grid_on, on, used = _all_tiles(path, ON, mpp_override)
    assert not used and len(grid) > 0
    assert np.array_equal(grid.x_px, grid_on.x_px) and np.array_equal(off, on)


def test_fallback_when_level_is_not_a_dct_factor(tmp_path):
    # 2× pyramid at 0.5 µm/px: the 2.0 µm/px level is read directly (box = 224, no scaling)
    _same_either_way(write_pyramidal_tiff(tmp_path / "g.tiff", mpp=0.5, size=(4600, 2400)).path)
    # 0.3 µm/px, Aperio-like: the 1.2 µm/px level needs a 373 px box (ratio 1.67)
    _same_either_way(write_pyramidal_tiff(tmp_path / "r.tiff", mpp=0.3, size=(7600, 4600), level_step=4).path)


def test_fallback_when_level_is_not_jpeg(tmp_path, slides):
    path = tmp_path / "deflate.tiff"
    with tifffile.TiffFile(slides["cells"].path) as src, tifffile.TiffWriter(path) as dst:
        for k, page in enumerate(src.pages):
            px_um = 0.25 * 4**k
            dst.write(page.asarray(), tile=(256, 256), compression="zlib", photometric="rgb",
                      subfiletype=1 if k else 0, resolution=(1e4 / px_um, 1e4 / px_um), resolutionunit="CENTIMETER",
                      metadata=None)
    _same_either_way(path)


def test_fallback_when_not_a_tiff(tmp_path):
    path = write_image_slide(tmp_path / "plain.png", size=(2400, 1400), px_um=1.0)
    _same_either_way(path, mpp_override=1.0)  # 1.0 µm/px, 448 px box: a factor 2, but a PNG


@pytest.mark.parametrize("damage", ["header", "entropy"])
def test_corrupt_tile_is_the_same_one_line_error(tmp_path, damage):
    fixture = write_pyramidal_tiff(tmp_path / "broken.tiff", mpp=0.25, size=SIZE_PX, tissue_boxes_um=BOXES_UM,
                                   level_step=4)
    with tifffile.TiffFile(fixture.path) as tif:
        page = tif.pages[1]  # the 1.0 µm/px level the tiles are read from
        offset, count = page.dataoffsets[1], page.databytecounts[1]
    with open(fixture.path, "r+b") as handle:
        if damage == "header":
            handle.seek(offset)
            handle.write(b"\0" * 64)
        else:  # garbage in the middle of the entropy-coded data: libjpeg only warns
            handle.seek(offset + count // 2)
            handle.write(bytes(range(64)))
    messages = []
    for settings in (OFF, ON):
        with open_slide(fixture.path, settings=settings) as slide:
            with pytest.raises(SlideError) as info:
                tissue_grid(slide, settings, use_mask=False)
        messages.append(str(info.value))
        assert "\n" not in messages[-1] and messages[-1].startswith(f"{fixture.path}: read failed at level 1")
    # the same message, but for the width of the region read (the full path reads whole strips,
    # the DCT path falls back to OpenSlide for the tiles on the broken file tile only)
    same = [re.sub(r"\(\d+, \d+\) size \d+x\d+", "(x, y) size WxH", m) for m in messages]
    assert same[0] == same[1]


@pytest.mark.skipif(not SHARED_SVS.exists(), reason="../shared/data/openslide-fixtures absent")
def test_real_aperio_tile_tables_and_rgb_colour_space():
    """small.svs: JPEGTables (abbreviated tile streams) and RGB-coded JPEG (photometric RGB)."""
    with tifffile.TiffFile(SHARED_SVS) as tif:
        page = tif.pages[0]
        tables, offset, count = page.jpegtables, page.dataoffsets[0], page.databytecounts[0]
        tile = (page.tilewidth, page.tilelength)
    with open(SHARED_SVS, "rb") as handle:
        handle.seek(offset)
        stream = splice(tables, handle.read(count))
    with open_slide(SHARED_SVS, settings=ON) as slide:
        w, h = slide.level_dimensions[0]
        expected = slide.read_rgb((0, 0), 0, (w, h))
    assert np.array_equal(decode(stream, 1, tile, rgb_data=True)[:h, :w], expected)
    assert decode(stream, 2, tile, rgb_data=True).shape == (tile[1] // 2, tile[0] // 2, 3)
    with pytest.raises(DecodeError):  # truncated: an error, never a partly grey tile
        decode(stream[:-40], 1, tile, rgb_data=True)


def test_switch_from_environment_and_its_own_signature(monkeypatch):
    from eagle_index.errors import InputError
    from eagle_index.models.signature import pipeline_params

    assert Settings().tiling.dct_scaled_decode is False  # opt-in (docs/pipeline.md says why)
    monkeypatch.setenv("EAGLE_INDEX_DCT_DECODE", "1")
    on = Settings.load()
    assert on.tiling.dct_scaled_decode is True
    assert pipeline_params(on)["decode"] == "dct-scaled"
    assert "decode" not in pipeline_params(Settings())  # off: the signature of every existing vector
    monkeypatch.setenv("EAGLE_INDEX_DCT_DECODE", "maybe")
    with pytest.raises(InputError, match="EAGLE_INDEX_DCT_DECODE='maybe'"):
        Settings.load()
