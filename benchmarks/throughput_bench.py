"""End-to-end throughput: N slides through the EAGLE pipeline with slides read ahead.

    .venv/bin/python benchmarks/throughput_bench.py [--device cpu|cuda] [--slides 8] [--tiles N]
        [--mpp 0.5] [--level-step 2|4] [--dct] [--read-workers N] [--prefetch 2] [--precision fp32|bf16]
        [--simulate-model TILES_PER_S | --simulate-fraction 0.8] [--baseline] [--workdir DIR] [--weights-dir DIR]

One slide is generated (benchmarks/pipeline_bench.py's slide: every tile different) and linked N
times under different names, so the reader opens and reads N slides. Printed: slides/h (and s per
slide), reader tiles/s, the consumer's wait fraction (time waiting for tiles / wall) and the model
fraction (time in model calls / wall: on CUDA the host time of enqueueing plus the one sync per
slide; when reading keeps up it is the GPU-busy fraction).

Models: `--device cuda` loads real-size random weights (pipeline_bench.prepare_weights); on the CPU
the tiny preset runs unless `--simulate-model` replaces the models by a consumer that sleeps a
fixed time per tile (releasing the GIL, as a GPU call does) - so overlap can be measured on a
machine without a GPU. `--simulate-fraction F` first measures the reader alone (all N slides, no
model) and then simulates a model at F x that reader capacity.

`--baseline` runs the same slides with the in-process threaded reader (read_workers 0, no read
ahead; the product before reader processes) in this process and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))


class _SleepEncoder:
    """A stand-in model: `per_tile_s` seconds per tile (sleep releases the GIL like a GPU call)."""

    def __init__(self, dim: int, per_tile_s: float):
        import torch

        self.dim, self.per_tile_s, self.device = dim, per_tile_s, torch.device("cpu")

    def encode(self, images, batch_size=None) -> np.ndarray:
        time.sleep(len(images) * self.per_tile_s)
        # a cheap feature that depends on the pixels, so CHIEF's stand-in has something to rank
        return np.repeat(images.reshape(len(images), -1)[:, ::4096].mean(1, keepdims=True), self.dim, 1).astype(np.float32)


class _SumChief:
    def raw_attention(self, feats) -> np.ndarray:
        return np.asarray(feats, dtype=np.float32).sum(1)


class SimulatedModels:
    def __init__(self, tiles_per_s: float):
        self.ctranspath = _SleepEncoder(768, 1.0 / tiles_per_s)
        self.virchow2 = _SleepEncoder(1280, 1.0 / tiles_per_s)
        self.chief = _SumChief()


def make_slides(workdir: Path, n: int, tiles: int, mpp: float, level_step: int) -> list[Path]:
    from pipeline_bench import write_bench_slide

    # pipeline_bench's slide when it is there (same writer), so one GPU check writes it once
    source = workdir / (f"pipeline-bench-{tiles}tiles-{mpp}mpp.tiff" if level_step == 2 else
                        f"throughput-{tiles}tiles-{mpp}mpp-step{level_step}.tiff")
    if not source.exists():
        t0 = time.perf_counter()
        write_bench_slide(source, tiles, mpp, level_step=level_step)
        print(f"wrote {source.name} in {time.perf_counter() - t0:.1f} s")
    links = workdir / f"links-{source.stem}"
    links.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        link = links / f"slide-{i:03d}.tiff"
        if not link.exists():
            os.link(source, link)
        paths.append(link)
    return paths


def read_only(paths: list[Path], tiling) -> tuple[int, float]:
    """The reader alone: every tissue tile of every slide, no model (tiles, seconds)."""
    from eagle_index.slides import iter_tissue_batches, open_slide
    from eagle_index.slides.pool import shared_pool

    t0 = time.perf_counter()
    n = 0
    busy0 = _busy(tiling)
    if tiling.read_workers == 0:
        for path in paths:
            with open_slide(path, settings=tiling) as slide:
                n += sum(len(b) for b in iter_tissue_batches(slide, tiling, batch_size=64))
    else:
        pool = shared_pool(tiling.read_workers, tiling.tile_px, tiling.read_buffer_mb)
        for handle in pool.stream(((p, None, None) for p in paths), tiling, prefetch=tiling.prefetch_slides):
            n += sum(len(b) for b in handle.tissue_batches(64))
    seconds = time.perf_counter() - t0
    _print_busy(tiling, busy0, seconds)
    return n, seconds


def _busy(tiling) -> float | None:
    """Seconds the reader processes have spent in tasks so far (None: threaded reader)."""
    if tiling.read_workers == 0:
        return None
    from eagle_index.slides.pool import shared_pool

    return shared_pool(tiling.read_workers, tiling.tile_px, tiling.read_buffer_mb).busy.value


def _print_busy(tiling, before: float | None, wall: float) -> None:
    if before is None:
        return
    from eagle_index.slides.pool import shared_pool

    pool = shared_pool(tiling.read_workers, tiling.tile_px, tiling.read_buffer_mb)
    busy = pool.busy.value - before
    print(f"    reader processes busy {busy / (pool.workers * wall):.1%} of {pool.workers} x {wall:.2f} s")


def run(paths: list[Path], models, settings, label: str) -> dict:
    from eagle_index import pipeline

    sync = _cuda_sync(models)
    sync()
    busy0 = _busy(settings.tiling)
    t0 = time.perf_counter()
    totals = dict.fromkeys(("read_wait", "ctranspath", "chief", "virchow2_read", "virchow2"), 0.0)
    tiles = 0
    for _, result in pipeline.embed_slides(((p, None, None) for p in paths), models, settings):
        if isinstance(result, BaseException):
            raise result
        tiles += result.n_tiles
        for key in totals:
            totals[key] += result.timings.get(key, 0.0)
    sync()
    wall = time.perf_counter() - t0
    n = len(paths)
    _print_busy(settings.tiling, busy0, wall)
    model = totals["ctranspath"] + totals["chief"] + totals["virchow2"]
    waits = totals["read_wait"] + totals["virchow2_read"]
    row = {"label": label, "slides": n, "tiles": tiles, "wall": wall, "s_per_slide": wall / n, "slides_h": 3600 * n / wall,
           "tiles_s": tiles / wall, "wait_frac": waits / wall, "model_frac": model / wall, **totals}
    print(f"  {label}: {row['slides_h']:,.0f} slides/h ({row['s_per_slide']:.3f} s per slide, {row['tiles_s']:,.0f} tiles/s); "
          f"consumer waiting {row['wait_frac']:.1%} of wall (tiles {totals['read_wait']:.2f} s + top-k re-read "
          f"{totals['virchow2_read']:.2f} s), in model calls {row['model_frac']:.1%}")
    return row


def _cuda_sync(models):
    device = getattr(getattr(models, "ctranspath", None), "device", None)
    if device is not None and getattr(device, "type", "") == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--tiles", type=int, default=None, help="tissue tiles per slide (default 200 on CPU, 2000 on CUDA)")
    parser.add_argument("--mpp", type=float, default=0.5, help="level-0 µm/px of the generated slide")
    parser.add_argument("--level-step", type=int, default=2, choices=(2, 4), help="2: generic pyramid; 4: Aperio-like")
    parser.add_argument("--dct", action="store_true", help="DCT-scaled JPEG decoding (opt-in reader path)")
    parser.add_argument("--read-workers", type=int, default=None, help="reader processes (default one per core)")
    parser.add_argument("--prefetch", type=int, default=2, help="slides read ahead")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=None, help="CTransPath batch on CUDA (default: from free memory)")
    parser.add_argument("--simulate-model", type=float, default=None, metavar="TILES_PER_S",
                        help="replace the models by a consumer taking 1/TILES_PER_S s per tile")
    parser.add_argument("--simulate-fraction", type=float, default=None, metavar="F",
                        help="measure the reader alone, then simulate a model at F x its tiles/s")
    parser.add_argument("--baseline", action="store_true", help="also run the threaded in-process reader and print the ratio")
    parser.add_argument("--reader-only", action="store_true", help="measure the reader alone and stop")
    parser.add_argument("--baseline-slides", type=int, default=None, help="slides for the baseline run (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "eagle-throughput-bench")
    parser.add_argument("--weights-dir", type=Path, default=None, help="real-size random weights (CUDA): reuse or keep here")
    args = parser.parse_args()
    tiles = args.tiles or (2000 if args.device == "cuda" else 200)
    args.workdir.mkdir(parents=True, exist_ok=True)

    import torch

    from eagle_index.config import InferenceSettings, Settings, TilingSettings
    from eagle_index.slides.pool import default_workers

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    tiling = TilingSettings(read_workers=args.read_workers, prefetch_slides=args.prefetch, dct_scaled_decode=args.dct)
    workers = args.read_workers if args.read_workers is not None else default_workers()
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none used"
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, GPU: {gpu}; python {platform.python_version()}, torch "
          f"{torch.__version__}; {args.slides} slides x {tiles} tiles, {args.mpp} µm/px, level step {args.level_step}"
          f"{', DCT-scaled decoding' if args.dct else ''}; read workers {workers}, prefetch {args.prefetch}, precision {args.precision}")
    paths = make_slides(args.workdir, args.slides, tiles, args.mpp, args.level_step)

    n, seconds = read_only(paths, tiling)
    print(f"  reader alone ({workers} processes): {n / seconds:,.0f} tiles/s ({n} tiles in {seconds:.2f} s)")
    if args.reader_only:
        print(f"RESULT reader {n / seconds:,.0f} tiles/s with {workers} processes")
        return
    if args.simulate_fraction:
        args.simulate_model = args.simulate_fraction * n / seconds
    inference = InferenceSettings(precision=args.precision, gpu_batch=args.batch_size)
    if args.simulate_model:
        print(f"  simulated model: {args.simulate_model:,.0f} tiles/s"
              f"{f' ({args.simulate_fraction:.0%} of the reader)' if args.simulate_fraction else ''}")
        models = SimulatedModels(args.simulate_model)
        settings = Settings(models="tiny", device="cpu", tiling=tiling, inference=inference)
    else:
        from eagle_index.models import load_models

        if args.device == "cuda":
            from pipeline_bench import prepare_weights, warm_up

            folder, _ = prepare_weights(args.weights_dir or args.workdir / "weights", args.workdir)
            settings = Settings(models="default", weights_dir=folder, device="cuda", tiling=tiling, inference=inference,
                                cache_dir=args.workdir / "cache")
            t0 = time.perf_counter()
            models = load_models(settings, allow_digest_mismatch=True)
            print(f"  loaded real-size models (random weights) in {time.perf_counter() - t0:.1f} s")
            warm_up(models)
        else:
            settings = Settings(models="tiny", device="cpu", tiling=tiling, inference=inference)
            models = load_models(settings)
    run(paths[:2], models, settings, "warm-up (2 slides)")
    row = run(paths, models, settings, f"reader processes x{workers}, prefetch {args.prefetch}")
    if args.baseline:
        threaded = settings.model_copy(update={"tiling": tiling.model_copy(update={"read_workers": 0}),
                                               "inference": inference.model_copy(update={"gpu_batch": 32})})
        base = run(paths[: args.baseline_slides or len(paths)], models, threaded, f"baseline: threaded reader ({tiling.read_threads} threads), batch 32, no read-ahead")
        print(f"  ratio: {row['slides_h'] / base['slides_h']:.2f}x the baseline's slides/h")
    print(f"RESULT {row['slides_h']:,.0f} slides/h, {row['s_per_slide']:.3f} s per slide, reader {n / seconds:,.0f} tiles/s, "
          f"waiting {row['wait_frac']:.1%}, in model calls {row['model_frac']:.1%}")


if __name__ == "__main__":
    main()
