"""Real-format slides from openslide-python's test suite (../shared/data/openslide-fixtures)."""

from pathlib import Path

import numpy as np
import pytest

from eagle_index.errors import InputError, SlideError
from eagle_index.slides import make_thumbnail, open_slide, read_tiles, tissue_grid

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "openslide-fixtures"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"{FIXTURES} not present (../shared is absent)")


@pytest.mark.parametrize("name, fmt", [("small.svs", "aperio"), ("boxes_0.dcm", "dicom"), ("boxes_1.dcm", "dicom")])
def test_good_slides_open_with_their_recorded_mpp(name, fmt):
    with open_slide(FIXTURES / name) as slide:
        assert slide.format == fmt
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "openslide"
        assert slide.dimensions == (16, 16)
        pixels = slide.read_rgb((0, 0), 0, (16, 16))
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        grid = tissue_grid(slide)  # 8 µm across: smaller than one tile, so no complete tile
        assert len(grid) == 0 and grid.mpp_source == "openslide"


def test_boxes_tiff_absurd_mpp_is_refused_unless_overridden():
    with pytest.raises(SlideError) as info:
        open_slide(FIXTURES / "boxes.tiff")
    message = str(info.value)
    assert "boxes.tiff" in message and "352.8" in message and "--mpp" in message
    with open_slide(FIXTURES / "boxes.tiff", mpp_override=2.0) as slide:
        assert (slide.mpp, slide.mpp_source, slide.format) == (2.0, "override", "generic-tiff")
        assert slide.level_count == 4
        grid = tissue_grid(slide)
        assert (grid.n_cols, grid.n_rows, grid.level) == (1, 1, 0)


def test_boxes_png_needs_an_mpp_override():
    with pytest.raises(SlideError, match=r"boxes\.png: no MPP recorded.*--mpp"):
        open_slide(FIXTURES / "boxes.png")
    with open_slide(FIXTURES / "boxes.png", mpp_override=2.0) as slide:
        assert slide.format == "image:png" and slide.level_count == 1
        grid = tissue_grid(slide)
        assert (grid.n_cols, grid.n_rows) == (1, 1)  # 600 × 500 µm: one complete 448 µm tile
        tile = read_tiles(slide, [0.0], [0.0])
        assert tile.shape == (1, 224, 224, 3)
        assert tuple(tile[0, 0, 0]) == (255, 255, 255)  # white background, not black


def test_thumbnail_of_a_slide_without_usable_mpp():
    with open_slide(FIXTURES / "boxes.tiff", require_mpp=False) as slide:
        assert slide.mpp is None and slide.mpp_source == "none" and "352.8" in slide.mpp_problem
        image = make_thumbnail(slide, max_size=128)
        assert max(image.size) == 128
        with pytest.raises(SlideError, match="boxes.tiff"):
            tissue_grid(slide)


@pytest.mark.parametrize("name, cause", [("unopenable.tiff", "Unsupported TIFF compression"),
                                         ("unreadable.svs", "cannot be read")])
def test_broken_files_raise_the_project_error_naming_the_file(name, cause):
    with pytest.raises(SlideError) as info:
        open_slide(FIXTURES / name)
    assert isinstance(info.value, InputError)  # the CLI maps it to a one-line message, exit 2
    message = str(info.value)
    assert message.startswith(str(FIXTURES / name)) and cause in message and "\n" not in message


def test_missing_file_is_a_slide_error():
    with pytest.raises(SlideError, match="no such file"):
        open_slide(FIXTURES / "does-not-exist.svs")
