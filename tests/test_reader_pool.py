"""Reader processes (slides/pool.py): the very tiles of the threaded reader, slides read ahead,
a corrupt slide failing alone, a dead reader process survived (issue 19)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from eagle_index import pipeline
from eagle_index.config import Settings, TilingSettings
from eagle_index.errors import SlideError
from eagle_index.models import load_models
from eagle_index.slides import iter_tissue_batches, open_slide, read_tiles
from eagle_index.slides.pool import ReaderPool, ReadRestart
from slide_fixtures import write_image_slide, write_pyramidal_tiff

BOX = 448.0
SHARED = Path(__file__).resolve().parents[2] / "shared/data/openslide-fixtures"
THREADS = TilingSettings(read_workers=0, read_threads=2)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, tuple[Path, float | None, TilingSettings]]:
    """Every reader path: generic 2x pyramid, Aperio-like 4x pyramid (full and DCT-scaled decode), a PNG."""
    folder = tmp_path_factory.mktemp("pool")
    boxes = [(300.0, 500.0, 1500.0, 900.0), (2000.0, 100.0, 380.0, 1300.0)]
    out = {
        "generic": (write_pyramidal_tiff(folder / "generic.tiff", mpp=0.5, size_um=(9 * BOX, 6 * BOX),
                                         tissue_boxes_um=[(BOX, BOX, 6 * BOX, 4 * BOX)], seed=3).path, None, THREADS),
        "aperio": (write_pyramidal_tiff(folder / "aperio.svs", mpp=0.25, size=(10_000, 6_400), tissue_boxes_um=boxes,
                                        level_step=4, objective=40, quality=80).path, None, THREADS),
        "png": (write_image_slide(folder / "plain.png", size=(1400, 1000), px_um=1.0,
                                  tissue_boxes_um=[(100.0, 100.0, 1100.0, 800.0)]), 1.0, THREADS),
    }
    out["aperio-dct"] = (out["aperio"][0], None, TilingSettings(read_workers=0, read_threads=2, dct_scaled_decode=True))
    if (SHARED / "boxes_0.dcm").exists():
        # 16 x 16 px: four 8 px tiles at 1 µm/px, every tile kept
        out["dicom"] = (SHARED / "boxes_0.dcm", 1.0, TilingSettings(read_workers=0, read_threads=2, target_mpp=1.0,
                                                                     tile_px=8, min_edge_ratio=0.0))
    return out


@pytest.fixture(scope="module")
def pool():
    with ReaderPool(2, 224, buffer_mb=64) as p:
        yield p


def _threaded(path, mpp, settings):
    with open_slide(path, mpp_override=mpp, settings=settings) as slide:
        batches = list(iter_tissue_batches(slide, settings, batch_size=16))
        x = np.concatenate([b.x_um for b in batches])
        y = np.concatenate([b.y_um for b in batches])
        return batches, read_tiles(slide, x[::-1][:25], y[::-1][:25], settings)


@pytest.mark.parametrize("key", ["generic", "aperio", "aperio-dct", "png", "dicom"])
def test_pool_tiles_are_bit_identical_to_the_threaded_reader(slides, pool, key):
    if key not in slides:
        pytest.skip("../shared/data/openslide-fixtures is not here")
    path, mpp, settings = slides[key]
    want, want_again = _threaded(path, mpp, settings)
    assert want, "the fixture has tissue tiles"
    if settings.tile_px != pool.tile_px:
        with ReaderPool(2, settings.tile_px, buffer_mb=16) as own:
            ((got, again),) = list(_one(own, path, mpp, settings))
    else:
        ((got, again),) = list(_one(pool, path, mpp, settings))
    assert [len(b) for b in got] == [len(b) for b in want]
    for g, w in zip(got, want):
        for field in ("images", "index", "x_px", "y_px", "x_um", "y_um"):
            np.testing.assert_array_equal(getattr(g, field), getattr(w, field), err_msg=f"{key}: {field}")
    np.testing.assert_array_equal(again, want_again)


def _one(pool, path, mpp, settings):
    for handle in pool.stream([(path, mpp, None)], settings, prefetch=0):
        while True:
            try:
                batches = list(handle.tissue_batches(16))
                x = np.concatenate([b.x_um for b in batches])
                y = np.concatenate([b.y_um for b in batches])
                yield batches, handle.read_tiles(x[::-1][:25], y[::-1][:25])
                break
            except ReadRestart:
                continue


@pytest.fixture(scope="module")
def tiny():
    return load_models(Settings(models="tiny", device="cpu"))


def test_embed_slides_read_ahead_equals_one_by_one_in_process_and_a_corrupt_slide_fails_alone(slides, tiny, tmp_path):
    raw = slides["generic"][0].read_bytes()
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(raw[: len(raw) // 3])
    order = [slides["generic"][0], broken, slides["aperio"][0], slides["png"][0]]
    mpps = [None, None, None, 2.0]
    threaded = Settings(models="tiny", device="cpu", tiling=THREADS)
    pooled = Settings(models="tiny", device="cpu", tiling=TilingSettings(read_workers=2, prefetch_slides=2))
    want = [pipeline.embed_slide(p, tiny, threaded, mpp_override=m) if p != broken else None for p, m in zip(order, mpps)]
    started = []
    got = list(pipeline.embed_slides(zip(order, mpps, [None] * 4), tiny, pooled, on_start=lambda item: started.append(item[0])))
    assert [item[0] for item, _ in got] == order == started
    assert isinstance(got[1][1], SlideError) and "broken.tiff" in str(got[1][1])
    for (_, result), ref in zip(got, want):
        if ref is None:
            continue
        assert result.name == ref.name and result.n_tiles == ref.n_tiles
        np.testing.assert_array_equal(result.feats, ref.feats)
        np.testing.assert_array_equal(result.scores, ref.scores)
        np.testing.assert_array_equal(result.candidates.class_tokens, ref.candidates.class_tokens)
        np.testing.assert_array_equal(result.x_um, ref.x_um)
        assert (result.mpp, result.level, result.width_px, result.format) == (ref.mpp, ref.level, ref.width_px, ref.format)


def test_a_dead_reader_process_is_replaced_and_the_slide_read_again(slides):
    path, mpp, settings = slides["generic"]
    want, _ = _threaded(path, mpp, settings)
    with ReaderPool(2, 224, buffer_mb=64) as pool:
        executor = pool._executor  # noqa: SLF001 - the test kills a reader process on purpose
        os.kill(next(iter(executor._processes)), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not executor._broken:  # the executor notices the death (no read is under way yet)
            assert time.monotonic() < deadline, "the pool never noticed its dead process"
            time.sleep(0.01)
        (got, _), = list(_one(pool, path, mpp, settings))
        assert pool.generation == 1  # the pool restarted once and the slide was read again, alone
    np.testing.assert_array_equal(np.concatenate([b.images for b in got]), np.concatenate([b.images for b in want]))


def test_stopping_early_leaves_no_error_behind(slides, tiny, capfd):
    """A consumer that stops after a result (the daemon on shutdown, `embed` on an error) closes
    the stream: the slide read ahead is given back quietly, with no 'Exception ignored' on stderr."""
    import gc

    pooled = Settings(models="tiny", device="cpu", tiling=TilingSettings(read_workers=2, prefetch_slides=2))
    order = [slides["generic"][0], slides["aperio"][0], slides["generic"][0]]
    for stop_after in (1, 2, 3):
        stream = pipeline.embed_slides(((p, None, None) for p in order), tiny, pooled)
        got = [next(stream) for _ in range(stop_after)]
        assert all(not isinstance(result, BaseException) for _, result in got)
        stream.close()
        del stream
        gc.collect()
    assert "Exception ignored" not in capfd.readouterr().err
