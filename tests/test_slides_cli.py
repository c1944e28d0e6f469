"""`eagle-index tiles` / `thumbnail`: the JSON contract, HDF5 output, one-line errors."""

from functools import partial
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_cli
from PIL import Image

from eagle_index.cli import main
from eagle_index.slides import open_slide, read_tiles
from slide_fixtures import tiles_inside, write_pyramidal_tiff


_run = partial(run_cli, check=False, timeout=120)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "openslide-fixtures"
BOXES_UM = [(448.0, 448.0, 896.0, 448.0)]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_pyramidal_tiff(tmp_path_factory.mktemp("cli") / "s.tiff", mpp=0.5, size_um=(1792.0, 1344.0),
                                tissue_boxes_um=BOXES_UM)


def cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tiles_json_contract(capsys, slide, tmp_path):
    code, out, _ = cli(capsys, "tiles", slide.path, "--json", "--data-dir", tmp_path / "data")
    data = json.loads(out)
    assert code == 0
    assert data["mpp"] == 0.5 and data["mpp_source"] == "tiff-resolution" and isinstance(data["level"], int)
    assert all(set(t) >= {"x_um", "y_um"} for t in data["tiles"])
    assert {(t["x_um"], t["y_um"]) for t in data["tiles"]} == tiles_inside(BOXES_UM, slide.size_um)
    assert data["n_tiles"] == len(data["tiles"]) == 2


def test_tiles_mpp_override_and_human_report(capsys, slide):
    code, out, _ = cli(capsys, "tiles", slide.path, "--mpp", "1.0")
    assert code == 0
    assert "1 µm/px (from override)" in out and "tissue tiles" in out and "read level" in out


def test_tiles_out_h5_with_exact_images(capsys, slide, tmp_path):
    out_file = tmp_path / "sub" / "tiles.h5"
    code, _, err = cli(capsys, "tiles", slide.path, "--out", out_file, "--images")
    assert code == 2 and "does not exist" in err and not out_file.parent.exists()  # an output folder is never made up
    out_file.parent.mkdir()
    code, _, _ = cli(capsys, "tiles", slide.path, "--out", out_file, "--images")
    assert code == 0 and out_file.is_file()
    assert not [p for p in out_file.parent.iterdir() if p.name != "tiles.h5"]  # no temp file left
    with h5py.File(out_file, "r") as handle:
        coords, images = handle["coords"][()], handle["images"][()]
        assert handle.attrs["unit"] == "um" and handle.attrs["tile_size_um"] == 448.0
        assert handle.attrs["mpp_source"] == "tiff-resolution"
        assert handle["coords_px"].shape == (2, 2)
    with open_slide(slide.path) as opened:
        assert np.array_equal(images, read_tiles(opened, coords[:, 0], coords[:, 1]))
    code, _, _ = cli(capsys, "tiles", slide.path, "--out", tmp_path / "coords.h5")
    with h5py.File(tmp_path / "coords.h5", "r") as handle:
        assert "images" not in handle and np.array_equal(handle["coords"][()], coords)


def test_thumbnail_command(capsys, slide, tmp_path):
    code, out, _ = cli(capsys, "thumbnail", slide.path, "--out", tmp_path / "t.png", "--tiles", "--max-size", "200",
                       "--data-dir", tmp_path)
    assert code == 0 and "2 tiles" in out
    assert max(Image.open(tmp_path / "t.png").size) == 200


def test_images_without_out_is_an_input_error(capsys, slide):
    code, _, err = cli(capsys, "tiles", slide.path, "--images")
    assert code == 2 and err.strip() == "error: --images needs --out FILE.h5"



@pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/data/openslide-fixtures not present")
@pytest.mark.parametrize("name, problem", [("boxes.tiff", "implausible MPP"), ("boxes.png", "no MPP recorded"),
                                          ("unopenable.tiff", "cannot open slide"),
                                          ("unreadable.svs", "cannot be read")])
def test_failures_are_one_line_without_traceback(name, problem):
    result = _run("tiles", FIXTURES / name, "--json")
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {FIXTURES / name}") and problem in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_slide_file_fails_cleanly(tmp_path):
    result = _run("thumbnail", tmp_path / "nope.svs", "--out", tmp_path / "t.png")
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope.svs'}: no such file"
