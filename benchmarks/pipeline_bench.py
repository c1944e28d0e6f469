"""Per-slide time split of the EAGLE pipeline with real-size architectures (random weights).

    .venv/bin/python benchmarks/pipeline_bench.py [--device cpu|cuda] [--tiles N] [--mpp 0.25]
        [--batch-size 32] [--read-threads 4] [--torch-threads T] [--repeats R] [--bf16]
        [--workdir DIR] [--weights-dir DIR]

What it does, in one process:

1. writes (once per workdir, then reuses) a JPEG-tiled pyramidal TIFF at `--mpp` µm/px whose
   tissue covers exactly `--tiles` whole 448 µm grid tiles (one tile of glass around them).
   Unlike the test fixtures' periodic texture, every tile here looks different (nuclei
   density, stroma colour and lumina vary smoothly across the slide), so CHIEF's scores - and
   hence the top-25 - are not decided by ties;
2. writes random real-size weights in the official file layouts (`tests/model_fixtures`,
   CTransPath 27.5 M, CHIEF 1.2 M, Virchow2 631 M parameters = 2.5 GB) into a temporary folder
   that is deleted at the end (unless `--weights-dir` names an existing one to reuse);
3. loads the models once (`load_models`, digests of the random files allowed to mismatch),
   warms them up, then times `pipeline.embed_slide` + `pipeline.aggregate_patient` on the
   slide (`--repeats` times, the median run by total is reported).

Printed split (seconds per slide): read_wait (the consumer waiting for tile batches; opening
the slide and the tissue mask included), ctranspath, chief, virchow2_read (reading the top-k
tiles again), virchow2, other (the rest of embed_slide), aggregation, total. "compute" is
ctranspath + chief + virchow2; the done-when of the issue is total / compute <= 1.25 on CPU
(reading hidden behind compute). On CPU two references follow: reading alone, and CTransPath
alone on the same tiles with no reader running (does the reader slow the model down?), in wall
seconds and process CPU-seconds (the latter are less disturbed by other load on the machine).

`--bf16` also measures bf16 autocast on CPU against fp32: speed of CTransPath (all tiles) and
Virchow2 (the top-k tiles), max abs / relative errors of the outputs, and whether the slide's
top-25 changes when CHIEF scores bf16 CTransPath features. The random official-layout weights
(std 0.02 everywhere) make every tile's features almost identical, so the top-25 is also
checked with default-initialised CTransPath and CHIEF, whose features do depend on the tile.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TILE_UM = 448.0
BASE_UM = 2.0  # the generated content is drawn at the tiles' resolution, then resampled per level
FILE_TILE_PX = 256
PARTS = ("read_wait", "ctranspath", "chief", "virchow2_read", "virchow2")
COMPUTE = ("ctranspath", "chief", "virchow2")


# -- slide --------------------------------------------------------------------------------
def tissue_layout(n_tiles: int) -> tuple[int, int, list[tuple[float, float, float, float]]]:
    """(cols, rows) of the slide in tiles and grid-aligned tissue boxes (µm) covering n_tiles tiles."""
    cols = max(1, round(math.sqrt(n_tiles * 4 / 3)))
    full_rows, rest = divmod(n_tiles, cols)
    boxes = [(TILE_UM, TILE_UM, cols * TILE_UM, full_rows * TILE_UM)] if full_rows else []
    if rest:
        boxes.append((TILE_UM, (1 + full_rows) * TILE_UM, rest * TILE_UM, TILE_UM))
    return cols + 2, full_rows + (rest > 0) + 2, boxes


def _smooth_field(rng, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth random field in [0, 1] with features of about `scale_px` pixels."""
    import cv2

    small = (max(2, int(shape[1] / scale_px) + 2), max(2, int(shape[0] / scale_px) + 2))
    field = cv2.resize(rng.random((small[1], small[0]), dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def render_base(size_um: tuple[float, float], boxes, seed: int) -> np.ndarray:
    """RGB uint8 image of the whole slide at 2.0 µm/px: glass, and H&E-like tissue in `boxes`."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = round(size_um[0] / BASE_UM), round(size_um[1] / BASE_UM)
    inside = np.zeros((h, w), bool)
    for bx, by, bw, bh in boxes:
        inside[round(by / BASE_UM):round((by + bh) / BASE_UM), round(bx / BASE_UM):round((bx + bw) / BASE_UM)] = True
    mix = _smooth_field(rng, (h, w), 60)[..., None]  # stroma colour: pale to dense eosin
    density = _smooth_field(rng, (h, w), 40)  # nuclei per pixel
    lumen = _smooth_field(rng, (h, w), 12) * _smooth_field(rng, (h, w), 80) > 0.45  # holes, glands, fat
    stroma = (1 - mix) * np.array([236, 190, 214], np.float32) + mix * np.array([206, 120, 170], np.float32)
    image = np.where(lumen[..., None], np.array([246, 240, 244], np.float32), stroma)
    nuclei = np.zeros((h, w), np.uint8)
    seeds = rng.random((h, w), dtype=np.float32) < (0.006 + 0.035 * density)
    nuclei[seeds & ~lumen] = 255
    nuclei = cv2.dilate(nuclei, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4, 4)))
    shade = rng.normal(0, 12, (h, w, 1)).astype(np.float32)
    image = np.where(nuclei[..., None] > 0, np.array([88, 52, 132], np.float32) + shade, image)
    image = cv2.GaussianBlur(image, (0, 0), 0.6)
    glass = np.float32(242) + rng.normal(0, 1.5, (h, w, 1)).astype(np.float32)
    image = np.where(inside[..., None], image, glass)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def write_bench_slide(path: Path, n_tiles: int, mpp: float, seed: int = 0, level_step: int = 2) -> int:
    """A pyramidal TIFF (downsample `level_step` per level: 2 generic, 4 Aperio-like) whose tissue
    covers `n_tiles` grid tiles."""
    import cv2
    import imagecodecs
    import tifffile

    cols, rows, boxes = tissue_layout(n_tiles)
    size_um = (cols * TILE_UM, rows * TILE_UM)
    base = render_base(size_um, boxes, seed)
    width, height = round(size_um[0] / mpp), round(size_um[1] / mpp)
    sizes = [(width, height)]
    while max(sizes[-1]) > FILE_TILE_PX:
        sizes.append((-(-sizes[-1][0] // level_step), -(-sizes[-1][1] // level_step)))

    def level_tiles(px_um: float, w: int, h: int):
        scale = px_um / BASE_UM  # base pixels per level pixel
        whole = None
        if scale >= 1:  # as coarse as the base or coarser: area-average the whole image once
            whole = cv2.resize(base, (w, h), interpolation=cv2.INTER_AREA) if abs(scale - 1) > 1e-9 else base
        for y0 in range(0, h, FILE_TILE_PX):
            for x0 in range(0, w, FILE_TILE_PX):
                if whole is not None:
                    tile = np.full((FILE_TILE_PX, FILE_TILE_PX, 3), 242, np.uint8)
                    crop = whole[y0:y0 + FILE_TILE_PX, x0:x0 + FILE_TILE_PX]
                    tile[:crop.shape[0], :crop.shape[1]] = crop
                else:  # finer than the base: bilinear upsampling of the base
                    mx = ((x0 + np.arange(FILE_TILE_PX, dtype=np.float32) + 0.5) * scale - 0.5)
                    my = ((y0 + np.arange(FILE_TILE_PX, dtype=np.float32) + 0.5) * scale - 0.5)
                    map_x, map_y = np.meshgrid(mx, my)
                    tile = cv2.remap(base, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                yield imagecodecs.jpeg_encode(tile, level=90, subsampling=(2, 2), colorspace="RGB", outcolorspace="YCBCR")

    tmp = path.with_suffix(".tmp.tiff")
    with tifffile.TiffWriter(tmp, bigtiff=width * height > 2**31) as tif:
        for k, (w, h) in enumerate(sizes):
            px_um = mpp * level_step**k
            tif.write(level_tiles(px_um, w, h), shape=(h, w, 3), dtype=np.uint8, tile=(FILE_TILE_PX, FILE_TILE_PX),
                      compression="jpeg", subsampling=(2, 2), photometric="rgb", subfiletype=1 if k else 0,
                      metadata=None, resolution=(1e4 / px_um, 1e4 / px_um), resolutionunit="CENTIMETER")
    tmp.rename(path)
    return n_tiles


# -- models -------------------------------------------------------------------------------
def prepare_weights(weights_dir: Path | None, scratch: Path) -> tuple[Path, bool]:
    """(folder with the three official-layout files, whether this run wrote it)."""
    from model_fixtures import write_official_layout_weights

    if weights_dir is not None and (weights_dir / "virchow2" / "pytorch_model.bin").exists():
        return weights_dir, False
    folder = weights_dir or scratch / "weights"
    t0 = time.perf_counter()
    write_official_layout_weights(folder, preset="manifest")
    print(f"wrote random real-size weights to {folder} in {time.perf_counter() - t0:.1f} s")
    return folder, weights_dir is None


def warm_up(models, tile_px: int = 224) -> None:
    """One small batch through each model: first calls pay for allocator/kernel set-up."""
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (4, tile_px, tile_px, 3), dtype=np.uint8)
    feats = models.ctranspath.encode(tiles)
    models.chief.raw_attention(feats)
    models.virchow2.encode(tiles[:2])


# -- measurement --------------------------------------------------------------------------
def run_once(path: Path, models, settings, batch_size: int) -> tuple[dict, object]:
    from eagle_index import pipeline

    cpu0 = time.process_time()
    result = pipeline.embed_slide(path, models, settings, batch_size=batch_size)
    t0 = time.perf_counter()
    pipeline.aggregate_patient([result], settings.eagle.top_k)
    timings = dict(result.timings)
    timings["aggregation"] = time.perf_counter() - t0
    timings["cpu_seconds"] = time.process_time() - cpu0
    timings["embed_total"] = timings["total"]
    timings["total"] += timings["aggregation"]
    timings["other"] = timings["embed_total"] - sum(timings[p] for p in PARTS)
    return timings, result


def print_split(runs: list[dict], n_tiles: int, k: int) -> None:
    """One column of seconds per timed run, the median run's share of its total, and the ratio."""
    median = sorted(runs, key=lambda t: t["total"])[len(runs) // 2]
    rows = [("read_wait", "consumer waited for tile batches (open, mask, read, Canny)"),
            ("ctranspath", f"CTransPath on {n_tiles} tiles"),
            ("chief", "CHIEF raw attention"),
            ("virchow2_read", f"reading the top-{k} tiles again"),
            ("virchow2", f"Virchow2 on the top-{k} tiles"),
            ("other", "rest of embed_slide (concatenation, top-k, result)"),
            ("aggregation", "patient top-k + mean (aggregate_patient)"),
            ("total", "")]
    heads = "".join(f"{f'run {i + 1} s':>10}" for i in range(len(runs)))
    print(f"  {'part':<14}{heads} {'share':>6}")
    for key, what in rows:
        cells = "".join(f"{t[key]:10.3f}" for t in runs)
        print(f"  {key:<14}{cells} {median[key] / median['total']:6.1%}  {what}")
    compute = [sum(t[p] for p in COMPUTE) for t in runs]
    print(f"  {'compute':<14}{''.join(f'{c:10.3f}' for c in compute)}         ctranspath + chief + virchow2")
    ratios = [t["total"] / c for t, c in zip(runs, compute)]
    print(f"  {'total/compute':<14}{''.join(f'{r:10.3f}' for r in ratios)}         "
          f"{'within' if max(ratios) <= 1.25 else 'ABOVE'} 1.25")


def references(path: Path, models, tiling, batch_size: int, timings: dict) -> None:
    """Reading alone and CTransPath alone on the same tiles: is anything hidden, does the reader slow the model?"""
    from eagle_index.slides import iter_tissue_batches, open_slide

    wall, cpu = time.perf_counter(), time.process_time()
    with open_slide(path, settings=tiling) as handle:
        tiles = np.concatenate([b.images for b in iter_tissue_batches(handle, tiling, batch_size=batch_size)])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  reading alone (open, mask, read, Canny; {tiling.read_threads} threads): {wall:.3f} s wall, {cpu:.3f} CPU-s")
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(tiles), batch_size):
        models.ctranspath.encode(tiles[start:start + batch_size])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  ctranspath alone (same tiles and batches, no reader running): {wall:.3f} s wall, {cpu:.1f} CPU-s; "
          f"in the pipeline {timings['ctranspath']:.3f} s wall (whole slide {timings['cpu_seconds']:.1f} CPU-s)")


def _errors(ref: np.ndarray, got: np.ndarray) -> str:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(got - ref)
    rel_rows = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return (f"max abs {diff.max():.3g} (max |fp32| {np.abs(ref).max():.3g}, max abs / max |fp32| {diff.max() / np.abs(ref).max():.3g}); "
            f"per-vector relative L2: max {rel_rows.max():.3g}, median {np.median(rel_rows):.3g}; min cosine {cos.min():.6f}")


class _Clock:
    """Wall seconds and process CPU-seconds of a block (CPU-s are less disturbed by other load)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:7.2f} s ({self.cpu:6.1f} CPU-s)"


def _top_k_change(head, f32: np.ndarray, bf: np.ndarray, result, k: int) -> str:
    from eagle_index import aggregation

    s32, sbf = head.raw_attention(f32), head.raw_attention(bf)
    c32 = aggregation.slide_candidates("s", s32, result.x_um, result.y_um, k)
    cbf = aggregation.slide_candidates("s", sbf, result.x_um, result.y_um, k)
    common = len(set(c32.tile_index.tolist()) & set(cbf.tile_index.tolist()))
    ordered = np.sort(s32.astype(np.float64))[::-1]
    gap = ordered[k - 1] - ordered[k] if len(ordered) > k else float("nan")
    verdict = "unchanged" if common == len(c32.tile_index) else "CHANGED"
    return (f"CHIEF scores: fp32 spread {s32.max() - s32.min():.3g}, gap #{k}/#{k + 1} {gap:.3g}, bf16 features move them "
            f"by up to {np.abs(sbf.astype(np.float64) - s32).max():.3g} -> top-{k} {verdict} ({common}/{len(c32.tile_index)} "
            f"in common, same order: {np.array_equal(c32.tile_index, cbf.tile_index)})")


def _spread(feats: np.ndarray) -> float:
    """Median tile-to-tile spread |f - mean f| / |f|: how much the features depend on the tile at all."""
    return float(np.median(np.linalg.norm(feats - feats.mean(axis=0), axis=1) / np.linalg.norm(feats, axis=1)))


def _default_init(encoder, cls, seed: int = 0):
    """The same architecture with PyTorch's / the module's own default initialisation (seeded)."""
    import torch

    from eagle_index.models.loading import build_module

    torch.manual_seed(seed)
    return cls(encoder.spec, build_module(encoder.spec).eval(), digest="default-init")


def _fp32_vs_bf16(encoder, tiles: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Encode in chunks, each chunk fp32 then bf16 right after, so both see the same machine load."""
    import torch

    out32, out16, wall, cpu = [], [], [0.0, 0.0], [0.0, 0.0]
    for start in range(0, len(tiles), step):
        chunk = tiles[start:start + step]
        for i, (out, context) in enumerate(((out32, contextlib.nullcontext), (out16, lambda: torch.autocast("cpu", dtype=torch.bfloat16)))):
            with _Clock() as clock, context():
                out.append(encoder.encode(chunk))
            wall[i] += clock.wall
            cpu[i] += clock.cpu
    n = len(tiles)
    speed = (f"fp32 {wall[0]:7.2f} s ({cpu[0]:6.1f} CPU-s, {n / wall[0]:5.2f} tiles/s), bf16 {wall[1]:7.2f} s ({cpu[1]:6.1f} CPU-s, "
             f"{n / wall[1]:5.2f} tiles/s): speed-up {wall[0] / wall[1]:.2f}x wall, {cpu[0] / cpu[1]:.2f}x CPU-s")
    return np.concatenate(out32), np.concatenate(out16), speed


def bf16_check(path: Path, models, settings, result) -> None:
    """bf16 autocast vs fp32 on CPU: speed, output errors, effect on the slide's top-k."""
    import torch

    from eagle_index.models.inference import SlideEncoder, TileEncoder
    from eagle_index.slides import iter_tissue_batches, open_slide, read_tiles

    k = settings.eagle.top_k
    with open_slide(path, settings=settings.tiling) as slide:
        tiles = np.concatenate([b.images for b in iter_tissue_batches(slide, settings.tiling)])
        top = read_tiles(slide, result.candidates.x_um, result.candidates.y_um, settings.tiling)
    print(f"bf16 autocast on CPU vs fp32 ({len(tiles)} tiles; the top-{len(top)} for Virchow2; "
          "fp32 and bf16 timed chunk by chunk, alternately)")

    f32, bf, speed = _fp32_vs_bf16(models.ctranspath, tiles, 32)
    print(f"  CTransPath {speed}")
    print(f"    features: {_errors(f32, bf)}")
    print(f"    (fp32 again vs the pipeline's features: max abs diff {np.abs(f32 - result.feats).max():.3g}; "
          f"tile-to-tile spread of the fp32 features {_spread(f32):.3g})")
    print(f"    with the random file weights: {_top_k_change(models.chief, f32, bf, result, k)}")

    v32, vbf, speed = _fp32_vs_bf16(models.virchow2, top, 5)
    print(f"  Virchow2 {speed}")
    print(f"    class tokens: {_errors(v32, vbf)} (tile-to-tile spread {_spread(v32):.3g})")
    print(f"    patient vector (mean of top-{len(top)}): {_errors(v32.mean(axis=0, keepdims=True), vbf.mean(axis=0, keepdims=True))}")

    # The official-layout random tensors (std 0.02 everywhere, LayerNorm/BatchNorm scales included)
    # wash the input out: every tile gets nearly the same feature vector, so the top-k above is
    # decided by rounding noise. Default-initialised weights keep more of the input's signal.
    ctp, chief = _default_init(models.ctranspath, TileEncoder), _default_init(models.chief, SlideEncoder)
    g32 = ctp.encode(tiles)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gbf = ctp.encode(tiles)
    print("  CTransPath with default-initialised random weights:")
    print(f"    features: {_errors(g32, gbf)} (tile-to-tile spread {_spread(g32):.3g})")
    print(f"    with a default-initialised CHIEF: {_top_k_change(chief, g32, gbf, result, k)}")


# -- main ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tiles", type=int, default=None, help="tissue tiles of the slide (default 200 on CPU, 2000 on CUDA)")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 µm/px of the generated slide")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per CTransPath batch (default: 32 on CPU, from free memory on CUDA)")
    parser.add_argument("--read-workers", type=int, default=None, help="reader processes (default: one per core; 0: threads)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="CTransPath precision (bf16: autocast)")
    parser.add_argument("--baseline", action="store_true", help="also run the in-process threaded reader (read_workers 0, "
                        "batch 32) in this process and print the ratio")
    parser.add_argument("--read-threads", type=int, default=None, help="reader threads (default: the settings' default)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs; the median by total is shown (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--bf16", action="store_true", help="also measure bf16 autocast on CPU against fp32")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "eagle-pipeline-bench",
                        help="where the slide is written once and reused")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="reuse (or create and keep) random weights here; default: a temporary folder, deleted")
    args = parser.parse_args()
    n_tiles = args.tiles or (2000 if args.device == "cuda" else 200)
    repeats = args.repeats or (3 if args.device == "cuda" else 1)
    args.workdir.mkdir(parents=True, exist_ok=True)

    import torch

    from eagle_index.config import Settings, TilingSettings
    from eagle_index.models import load_models

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    tiling = TilingSettings(**({"read_threads": args.read_threads} if args.read_threads else {}),
                            **({"read_workers": args.read_workers} if args.read_workers is not None else {}))

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none used"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({_cpu_model()}), GPU: {gpu}; python {platform.python_version()}, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, read threads {tiling.read_threads}, "
          f"read workers {tiling.read_workers if tiling.read_workers is not None else 'one per core'}, batch {args.batch_size or 'auto'}, "
          f"precision {args.precision}")

    slide = args.workdir / f"pipeline-bench-{n_tiles}tiles-{args.mpp}mpp.tiff"
    if not slide.exists():
        t0 = time.perf_counter()
        write_bench_slide(slide, n_tiles, args.mpp)
        print(f"wrote {slide} in {time.perf_counter() - t0:.1f} s")
    scratch = Path(tempfile.mkdtemp(prefix="weights-", dir=args.workdir))
    try:
        folder, _ = prepare_weights(args.weights_dir, scratch)
        # digests of random files stay out of ~/.cache (unless EAGLE_INDEX_CACHE names a cache)
        from eagle_index.config import InferenceSettings

        settings = Settings.load(models="default", weights_dir=folder, device=args.device, tiling=tiling,
                                 inference=InferenceSettings(precision=args.precision))
        if not os.environ.get("EAGLE_INDEX_CACHE"):
            settings = settings.model_copy(update={"cache_dir": args.workdir / "cache"})
        t0 = time.perf_counter()
        models = load_models(settings, allow_digest_mismatch=True)
        print(f"loaded models once in {time.perf_counter() - t0:.1f} s (not part of the per-slide time); warming up")
        warm_up(models)

        runs = [run_once(slide, models, settings, args.batch_size) for _ in range(repeats)]
        timings, result = sorted(runs, key=lambda r: r[0]["total"])[len(runs) // 2]  # the median run
        k = len(result.candidates.x_um)
        print(f"slide: {slide.name}, {result.width_px} x {result.height_px} px at {result.mpp} µm/px, read level "
              f"{result.level}, {result.n_tiles} tissue tiles; device {args.device}")
        print_split([t for t, _ in runs], result.n_tiles, k)
        print(f"  seconds per slide (median run): {timings['total']:.3f} ({result.n_tiles / timings['total']:.1f} tiles/s end to end)")
        if args.baseline:
            threaded = settings.model_copy(update={"tiling": tiling.model_copy(update={"read_workers": 0})})
            base, _ = run_once(slide, models, threaded, 32)
            print(f"  baseline (threaded reader, {tiling.read_threads} threads, batch 32): {base['total']:.3f} s/slide "
                  f"(read_wait {base['read_wait']:.3f}, ctranspath {base['ctranspath']:.3f}); "
                  f"ratio baseline / this: {base['total'] / timings['total']:.2f}x")
        if args.device == "cpu":
            references(slide, models, tiling, args.batch_size or 32, timings)
        if args.bf16:
            if args.device != "cpu":
                print("--bf16 measures CPU autocast; skipped on", args.device)
            else:
                bf16_check(slide, models, settings, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
