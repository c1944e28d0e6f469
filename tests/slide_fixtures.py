"""Test-side name of the synthetic slide writer (it lives in the package for `make demo`)."""

from eagle_index.slides.synthetic import FixtureSlide, tiles_inside, write_image_slide, write_pyramidal_tiff

__all__ = ["FixtureSlide", "tiles_inside", "write_image_slide", "write_pyramidal_tiff"]
