"""Tiling throughput: our reader vs the naive "read level 0 and resize" baseline (STAMP v2).

    .venv/bin/python benchmarks/tiling_bench.py [--workdir /tmp/eagle-bench] [--threads 4]

Writes (once, then reuses) a 40,000 × 30,000 px JPEG-tiled slide at 0.25 µm/px with about
half of its area tissue, in two pyramid layouts: "generic" (downsample 2, 4, 8, ...) and
"aperio-like" (4, 16, ...). For each it times, in the same run and with the same number of
threads:

- ours, end to end: tissue mask + one pass over the candidates, Canny rule, yielding the
  kept 224 px tiles (`iter_tissue_batches`), from the best level;
- ours, every tile: all complete tiles of the grid from the best level (`iter_tile_batches`),
  no mask - reading speed alone;
- naive: every complete tile read from level 0 (1792 px), resized with PIL bicubic (as
  STAMP does), Canny rule;
- "+ DCT": both "ours" rows again with `dct_scaled_decode` on (JPEG tiles decoded at 1/2,
  1/4 or 1/8 scale in the inverse DCT where the read level is exactly that much finer than
  the target: the aperio-like layout; on the generic one the 2.0 µm/px level is read as is).

tiles/s counts tiles delivered; "kept/s" counts the tissue tiles of the end-to-end run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from eagle_index.slides.synthetic import write_pyramidal_tiff  # noqa: E402

from eagle_index.config import TilingSettings  # noqa: E402
from eagle_index.slides import full_grid, iter_tile_batches, iter_tissue_batches, keep_tiles, open_slide  # noqa: E402

SIZE_PX = (40_000, 30_000)
MPP = 0.25
# About half the slide: two tissue pieces, not aligned to the tile grid.
BOXES_UM = [(700.0, 900.0, 5200.0, 5600.0), (6500.0, 1500.0, 2900.0, 4300.0)]


def make_slide(workdir: Path, layout: str) -> Path:
    path = workdir / f"bench-{layout}-{SIZE_PX[0]}x{SIZE_PX[1]}-{MPP}.tiff"
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_suffix(".tmp.tiff")
        write_pyramidal_tiff(tmp, mpp=MPP, size=SIZE_PX, tissue_boxes_um=BOXES_UM,
                             level_step=2 if layout == "generic" else 4)
        tmp.rename(path)
        size_mb = path.stat().st_size / 1e6
        print(f"  wrote {path.name} in {time.perf_counter() - t0:.1f}s ({size_mb:.0f} MB)")
    return path


def bench_ours(path: Path, settings: TilingSettings) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open_slide(path, settings=settings) as slide:
        n = sum(len(b) for b in iter_tissue_batches(slide, settings, batch_size=64))
    return n, time.perf_counter() - t0


def bench_ours_all(path: Path, settings: TilingSettings) -> tuple[int, float, int]:
    t0 = time.perf_counter()
    with open_slide(path, settings=settings) as slide:
        grid = full_grid(slide, settings)
        n = sum(len(b) for b in iter_tile_batches(slide, grid, batch_size=64, settings=settings))
    return n, time.perf_counter() - t0, grid.level


def bench_naive(path: Path, settings: TilingSettings) -> tuple[int, float, int]:
    """Level 0, one region per tile, PIL bicubic resize, Canny - on a thread pool of the same size."""
    from PIL import Image

    t0 = time.perf_counter()
    with open_slide(path, settings=settings) as slide:
        grid = full_grid(slide, settings)
        side_px = int(np.ceil(settings.tile_um / slide.mpp))

        def one(i: int) -> bool:
            location = (int(grid.x_px[i]), int(grid.y_px[i]))
            region = slide._handle.read_region(location, 0, (side_px, side_px))  # noqa: SLF001
            tile = region.convert("RGB").resize((settings.tile_px, settings.tile_px), Image.BICUBIC)
            return bool(keep_tiles(np.asarray(tile)[None], settings)[0])

        with ThreadPoolExecutor(settings.read_threads) as pool:
            kept = sum(pool.map(one, range(len(grid))))
    return len(grid), time.perf_counter() - t0, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/eagle-bench"))
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--layouts", default="generic,aperio-like")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = TilingSettings(read_threads=args.threads)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"read threads {args.threads}")
    for layout in args.layouts.split(","):
        print(f"[{layout}] {SIZE_PX[0]} x {SIZE_PX[1]} px at {MPP} µm/px")
        path = make_slide(args.workdir, layout)
        kept, t_ours = bench_ours(path, settings)
        n_all, t_all, level = bench_ours_all(path, settings)
        dct = settings.model_copy(update={"dct_scaled_decode": True})
        kept_dct, t_ours_dct = bench_ours(path, dct)
        n_dct, t_dct, _ = bench_ours_all(path, dct)
        n_naive, t_naive, kept_naive = bench_naive(path, settings)
        rows = [
            (f"ours, end to end (mask, level {level}, Canny)", kept, t_ours, "kept"),
            (f"ours, every tile (level {level}, no mask)", n_all, t_all, "tiles"),
            ("ours + DCT, end to end", kept_dct, t_ours_dct, "kept"),
            ("ours + DCT, every tile", n_dct, t_dct, "tiles"),
            ("naive, every tile (level 0, PIL bicubic, Canny)", n_naive, t_naive, "tiles"),
        ]
        for name, n, seconds, unit in rows:
            print(f"  {name:<50} {n:5d} {unit:<5} {seconds:7.2f} s {n / seconds:8.1f} {unit}/s")
        print(f"  naive kept {kept_naive} tissue tiles = {kept_naive / t_naive:.1f} kept/s")
        print(f"  ratio tiles/s, every tile (ours / naive): {(n_all / t_all) / (n_naive / t_naive):.1f}x")
        print(f"  ratio kept/s, end to end  (ours / naive): {(kept / t_ours) / (kept_naive / t_naive):.1f}x")
        print(f"  ratio tiles/s, every tile (ours + DCT / naive): {(n_dct / t_dct) / (n_naive / t_naive):.1f}x, "
              f"(ours + DCT / ours): {(n_dct / t_dct) / (n_all / t_all):.2f}x")
        print(f"  ratio kept/s, end to end  (ours + DCT / naive): {(kept_dct / t_ours_dct) / (kept_naive / t_naive):.1f}x, "
              f"(ours + DCT / ours): {(kept_dct / t_ours_dct) / (kept / t_ours):.2f}x; kept {kept_dct} vs {kept}")

if __name__ == "__main__":
    main()
