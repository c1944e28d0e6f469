"""Tile grid, tissue rule, reads: checked against the geometry the fixture slides were drawn with."""

import hashlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from eagle_index.config import TilingSettings
from eagle_index.errors import SlideError
from eagle_index.slides import (
    candidate_grid,
    edge_ratio,
    full_grid,
    gray_l,
    iter_tile_batches,
    iter_tissue_batches,
    make_thumbnail,
    open_slide,
    read_tiles,
    tissue_grid,
)
from slide_fixtures import tiles_inside, write_image_slide, write_pyramidal_tiff

SIZE_UM = (2240.0, 1792.0)  # 5 × 4 tiles of 448 µm
BOXES_UM = [(448.0, 448.0, 896.0, 896.0), (1792.0, 0.0, 448.0, 448.0)]
EXPECTED = tiles_inside(BOXES_UM, SIZE_UM)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    out = {}
    for mpp in (0.25, 0.5, 1.0):
        out[mpp] = write_pyramidal_tiff(folder / f"s{mpp}.tiff", mpp=mpp, size_um=SIZE_UM, tissue_boxes_um=BOXES_UM)
    out["no-mpp"] = write_pyramidal_tiff(folder / "nompp.tiff", mpp=0.5, size_um=SIZE_UM, tissue_boxes_um=BOXES_UM,
                                         write_mpp=False)
    out["objective"] = write_pyramidal_tiff(folder / "obj.svs", mpp=0.5, size_um=SIZE_UM, tissue_boxes_um=BOXES_UM,
                                            objective=20, write_mpp=False)
    # odd size: OpenSlide reports non-integer downsamples; tissue not aligned to the grid
    out["odd"] = write_pyramidal_tiff(folder / "odd.svs", mpp=0.5042, size=(3601, 2703), objective=20,
                                      tissue_boxes_um=[(300.0, 500.0, 1200.0, 700.0)])
    return out


def _coords(grid):
    return set(zip(grid.x_um.tolist(), grid.y_um.tolist()))


def _within(found, expected, tolerance_um):
    return len(found) == len(expected) and all(
        any(abs(x - ex) <= tolerance_um and abs(y - ey) <= tolerance_um for ex, ey in expected) for x, y in found)


@pytest.mark.parametrize("key, override, source", [(0.25, None, "tiff-resolution"), (0.5, None, "tiff-resolution"),
                                                   (1.0, None, "tiff-resolution"), ("no-mpp", 0.5, "override"),
                                                   ("objective", None, "objective-power")])
def test_same_tissue_grid_in_um_at_every_mpp(slides, key, override, source):
    with open_slide(slides[key].path, mpp_override=override) as slide:
        assert slide.mpp_source == source
        grid = tissue_grid(slide)
    assert grid.mpp_source == source and grid.tile_um == 448.0 and grid.tile_px == 224
    assert _coords(grid) == EXPECTED  # exact here; the contract is "within one tile"
    assert np.array_equal(grid.x_um, grid.x_px * grid.mpp)


def test_unaligned_slide_grid_within_one_tile(slides):
    fixture = slides["odd"]
    with open_slide(fixture.path) as slide:
        grid = tissue_grid(slide)
    # tiles that overlap the 1200 × 700 µm box at (300, 500): columns 0-3, rows 1-2
    expected = {(c * 448.0, r * 448.0) for c in range(4) for r in (1, 2)}
    assert _within(_coords(grid), expected, 448.0)
    assert np.all(np.abs(grid.x_um - grid.col * 448.0) <= fixture.mpp / 2 + 1e-9)


def test_no_mpp_slide_is_refused_without_override(slides):
    with pytest.raises(SlideError, match="nompp.tiff: no MPP recorded"):
        open_slide(slides["no-mpp"].path)


def test_best_level_is_closest_not_coarser(tmp_path, slides):
    with open_slide(slides[0.25].path) as slide:
        grid = full_grid(slide)
        assert slide.level_downsamples[grid.level] == 8.0 and grid.level_box_px == 224
    aperio_like = write_pyramidal_tiff(tmp_path / "a.tiff", mpp=0.25, size_um=SIZE_UM, level_step=4)
    with open_slide(aperio_like.path) as slide:
        grid = full_grid(slide)
        assert slide.level_downsamples[grid.level] == 4.0 and grid.level_box_px == 448


def test_grid_is_row_major_and_drops_partial_border_tiles(slides):
    with open_slide(slides[0.5].path) as slide:
        grid = full_grid(slide)
    assert (grid.n_cols, grid.n_rows, len(grid)) == (5, 4, 20)
    assert np.array_equal(np.lexsort((grid.x_px, grid.y_px)), np.arange(len(grid)))
    with open_slide(slides["odd"].path) as slide:
        grid = full_grid(slide)  # 1816 × 1363 µm: 4 × 3 complete tiles, partial ones dropped
        assert (grid.n_cols, grid.n_rows) == (4, 3)
        assert np.all(grid.x_um + 448.0 <= slide.dimensions[0] * slide.mpp + 1e-6)


@pytest.mark.parametrize("texture", ["cells", "fat"])
def test_mask_never_drops_a_tile_the_canny_rule_keeps(tmp_path, texture):
    boxes = [(300.0, 500.0, 1100.0, 650.0), (2000.0, 1000.0, 60.0, 60.0)]  # a small piece, unaligned
    fixture = write_pyramidal_tiff(tmp_path / "m.tiff", mpp=0.5, size_um=(3136.0, 2240.0), tissue_boxes_um=boxes,
                                   texture=texture)
    with open_slide(fixture.path) as slide:
        masked, unmasked = tissue_grid(slide), tissue_grid(slide, use_mask=False)
        candidates = candidate_grid(slide)
    assert candidates.mask_level is not None and len(candidates) < len(full_grid_of(fixture))
    assert len(unmasked) > 0 and _coords(masked) == _coords(unmasked)


def full_grid_of(fixture):
    with open_slide(fixture.path) as slide:
        return full_grid(slide)


def _all_images(batches):
    return np.concatenate([b.images for b in batches])


@pytest.mark.parametrize("key", [0.25, 1.0, "odd"])
def test_read_tiles_gives_the_grid_readers_exact_pixels(slides, key):
    with open_slide(slides[key].path) as slide:
        grid = full_grid(slide)
        grid_images = _all_images(iter_tile_batches(slide, grid, batch_size=7))
        assert grid_images.shape == (len(grid), 224, 224, 3) and grid_images.dtype == np.uint8
        again = read_tiles(slide, grid.x_um[::-1], grid.y_um[::-1])[::-1]  # any order, one by one
        assert np.array_equal(grid_images, again)
        tissue = list(iter_tissue_batches(slide, batch_size=3))
        coords = np.concatenate([b.x_um for b in tissue]), np.concatenate([b.y_um for b in tissue])
        assert np.array_equal(_all_images(tissue), read_tiles(slide, *coords))
        kept = tissue_grid(slide)
        assert np.array_equal(np.concatenate([b.index for b in tissue]), np.arange(len(kept)))
        assert np.array_equal(coords[0], kept.x_um) and np.array_equal(coords[1], kept.y_um)


def _digest(path, threads, batch_size):
    settings = TilingSettings(read_threads=threads)
    with open_slide(path, settings=settings) as slide:
        pixels, coords = hashlib.sha256(), hashlib.sha256()
        for batch in iter_tissue_batches(slide, batch_size=batch_size):
            pixels.update(batch.images.tobytes())
            coords.update(np.stack([batch.x_px, batch.y_px], axis=1).tobytes())
    return pixels.hexdigest(), coords.hexdigest()


def test_reading_is_deterministic_bit_for_bit(slides):
    for key in (0.25, "odd"):
        path = slides[key].path
        assert _digest(path, 1, 64) == _digest(path, 4, 5) == _digest(path, 3, 2)


def test_canny_rule_on_glass_and_tissue(slides):
    with open_slide(slides[0.5].path) as slide:
        glass, tissue = read_tiles(slide, [0.0, 448.0], [0.0, 448.0])
    assert edge_ratio(glass) < 0.005 and edge_ratio(tissue) > 0.1
    strict = TilingSettings(min_edge_ratio=0.9)
    with open_slide(slides[0.5].path, settings=strict) as slide:
        assert len(tissue_grid(slide)) == 0


def test_gray_matches_pil_convert_l():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(gray_l(rgb), np.asarray(Image.fromarray(rgb).convert("L")))


def test_plain_image_with_override(tmp_path):
    path = write_image_slide(tmp_path / "plain.png", size=(1120, 896), px_um=2.0, tissue_boxes_um=BOXES_UM)
    with pytest.raises(SlideError, match="plain.png"):
        open_slide(path)
    with open_slide(path, mpp_override=2.0) as slide:
        assert slide.format == "image:png"
        assert _coords(tissue_grid(slide)) == EXPECTED


def test_failure_mid_read_names_the_file(tmp_path):
    fixture = write_pyramidal_tiff(tmp_path / "broken.tiff", mpp=1.0, size_um=SIZE_UM, tissue_boxes_um=BOXES_UM)
    with tifffile.TiffFile(fixture.path) as tif:
        page = tif.pages[1]  # the 2 µm/px level the tiles are read from
        offset = page.dataoffsets[len(page.dataoffsets) // 2]
    with open(fixture.path, "r+b") as handle:  # destroy one JPEG tile's header
        handle.seek(offset)
        handle.write(b"\0" * 64)
    with open_slide(fixture.path) as slide:
        with pytest.raises(SlideError) as info:
            tissue_grid(slide, use_mask=False)
    assert str(info.value).startswith(f"{fixture.path}: read failed at level 1")


def test_closed_slide_cannot_be_read(slides):
    slide = open_slide(slides[1.0].path)
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        read_tiles(slide, [0.0], [0.0])


def test_thumbnail_draws_mask_and_tiles(slides):
    with open_slide(slides[0.5].path) as slide:
        grid = tissue_grid(slide)
        image = np.asarray(make_thumbnail(slide, grid, max_size=300))
    assert max(image.shape[:2]) == 300 and image.shape[2] == 3
    assert np.any(np.all(image == (0, 80, 255), axis=2))  # tile boxes
    assert np.any(np.all(image == (0, 170, 0), axis=2))  # mask outline
