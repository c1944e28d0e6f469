"""Parity of DCT-scaled JPEG decoding (`dct_scaled_decode`) against today's full decode + area filter.

    .venv/bin/python benchmarks/dct_parity.py [SLIDE ...] [--workdir /tmp/eagle-dct] [--mpp MPP]

For every complete grid tile of each slide (no mask: glass, border and tissue tiles alike) it
reads the tile both ways and reports: Canny (tissue/background) decisions that differ, how
many tiles the guard band sent back to the full decode, pixel differences, the cosine of the
raw pixel vectors, and the cosine of CTransPath features (`tiny` preset: seeded random
weights, real architecture) - also with the guard band off, to show what it protects.

Without SLIDE arguments it writes Aperio-like slides (downsamples 1, 4, 16; 0.25 µm/px; JPEG
quality 70, 80, 90 as scanners use; "cells" and "fat" textures; tissue not aligned to the
grid). Real slides (SVS / tiled TIFF) can be given; a slide where the DCT path does not
apply reports "not used".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eagle_index.config import Settings, TilingSettings  # noqa: E402
from eagle_index.slides import edge_ratio, full_grid, iter_tile_batches, open_slide  # noqa: E402
from eagle_index.slides import tiling  # noqa: E402
from eagle_index.slides.jpeg_scaled import scaled_level  # noqa: E402
from eagle_index.slides.synthetic import write_pyramidal_tiff  # noqa: E402

SIZE_PX = (24_000, 16_000)  # 6 × 4 mm: 13 × 8 = 104 tiles
BOXES_UM = [(700.0, 900.0, 2500.0, 1900.0), (3700.0, 300.0, 1500.0, 2900.0)]


def read_all(path: Path, settings: TilingSettings, mpp: float | None):
    with open_slide(path, mpp_override=mpp, settings=settings) as slide:
        grid = full_grid(slide, settings)
        t0 = time.perf_counter()
        images = [b.images for b in iter_tile_batches(slide, grid, 64, settings)]
        seconds = time.perf_counter() - t0
        used = scaled_level(slide, grid.level, grid.level_box_px, grid.tile_px) is not None
    return (np.concatenate(images) if images else np.zeros((0, 224, 224, 3), np.uint8)), seconds, used


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slides", nargs="*", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/eagle-dct"))
    parser.add_argument("--mpp", type=float, default=None, help="MPP override for the given slides")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from eagle_index.models import load_models

    encoder = load_models(Settings(models="tiny", device="cpu"), only=("ctranspath",)).ctranspath
    paths = list(args.slides)
    if not paths:
        args.workdir.mkdir(parents=True, exist_ok=True)
        for texture in ("cells", "fat"):
            for quality in (70, 80, 90):
                path = args.workdir / f"aperio-{texture}-q{quality}.tiff"
                if not path.exists():
                    write_pyramidal_tiff(path, mpp=0.25, size=SIZE_PX, tissue_boxes_um=BOXES_UM, level_step=4,
                                         texture=texture, quality=quality)
                paths.append(path)
    off = TilingSettings(read_threads=args.threads, dct_scaled_decode=False)
    on = off.model_copy(update={"dct_scaled_decode": True})
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print("slide | tiles | kept (full) | Canny diff (no guard) | guard -> full | max |px diff| | mean | "
          "pixel cos min | CTransPath-tiny cos min (no guard) | s full / s DCT")
    totals = dict(tiles=0, diff=0, diff_raw=0, guard=0, cos=1.0, cos_raw=1.0)
    for path in paths:
        full, t_full, _ = read_all(path, off, args.mpp)
        dct, t_dct, used = read_all(path, on, args.mpp)
        guard = tiling.DCT_CANNY_GUARD
        tiling.DCT_CANNY_GUARD = 0.0
        try:
            raw, _, _ = read_all(path, on, args.mpp)
        finally:
            tiling.DCT_CANNY_GUARD = guard
        if not used:
            print(f"{path.name} | {len(full)} | DCT path not used (not a JPEG TIFF level at 2/4/8x the target)")
            continue
        keep = lambda x: np.array([edge_ratio(t, off) >= off.min_edge_ratio for t in x])  # noqa: E731
        k_full, k_dct, k_raw = keep(full), keep(dct), keep(raw)
        same = np.all(full.reshape(len(full), -1) == dct.reshape(len(dct), -1), axis=1)
        diff = np.abs(full.astype(np.int16) - dct)
        f_full, f_dct, f_raw = encoder.encode(full), encoder.encode(dct), encoder.encode(raw)
        c, c_raw = cosine(f_full, f_dct).min(), cosine(f_full, f_raw).min()
        print(f"{path.name} | {len(full)} | {int(k_full.sum())} | {int((k_full != k_dct).sum())} "
              f"({int((k_full != k_raw).sum())}) | {int(same.sum())} | {int(diff.max())} | {diff.mean():.3f} | "
              f"{cosine(full, dct).min():.6f} | {c:.6f} ({c_raw:.6f}) | {t_full:.2f} / {t_dct:.2f}")
        totals["tiles"] += len(full)
        totals["diff"] += int((k_full != k_dct).sum())
        totals["diff_raw"] += int((k_full != k_raw).sum())
        totals["guard"] += int(same.sum())
        totals["cos"], totals["cos_raw"] = min(totals["cos"], c), min(totals["cos_raw"], c_raw)
    print(f"all: {totals['tiles']} tiles, Canny decisions differing {totals['diff']} "
          f"(without guard band {totals['diff_raw']}), {totals['guard']} tiles read in full by the guard, "
          f"CTransPath-tiny cosine min {totals['cos']:.6f} (without guard {totals['cos_raw']:.6f})")


if __name__ == "__main__":
    main()
