"""The EAGLE pipeline: slide file(s) -> per-slide results -> patient vectors. No storage here.

Per slide: EAGLE tissue tiles (eagle_index.slides) -> CTransPath features of every tile ->
CHIEF raw attention -> the slide's top-k candidates -> Virchow2 class tokens of only those
k tiles, read again from the slide pyramid at 2 µm/px. Per patient: top-k over the union of
its slides' candidates, mean of their class tokens (see eagle_index.aggregation for the
tie rule). Tiles are read by reader processes ahead of the model (slides/pool.py), the next
slides while this one is embedded, so reading overlaps compute and never holds the GIL of the
process that feeds the GPU.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eagle_index import aggregation
from eagle_index.config import Settings
from eagle_index.errors import SlideError

log = logging.getLogger(__name__)

FEATURE_DTYPE = "float16"  # CTransPath features are rounded to this before CHIEF (a signed pipeline parameter)


@dataclass
class SlideResult:
    """Everything the pipeline learns from one slide; also what its artifact file holds."""

    name: str
    x_um: np.ndarray  # float64 (N,) top-left, level-0 origin
    y_um: np.ndarray
    feats: np.ndarray  # float32 (N, D) CTransPath
    scores: np.ndarray  # float32 (N,) CHIEF raw attention
    candidates: aggregation.SlideCandidates
    tile_um: float
    tile_px: int
    mpp: float | None = None
    mpp_source: str | None = None
    level: int | None = None
    width_px: int | None = None
    height_px: int | None = None
    format: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return len(self.scores)


@dataclass
class PatientVectors:
    """The vectors of one patient: raw (un-normalized) as the reference defines them."""

    eagle: np.ndarray  # mean Virchow2 class token of the top-k tiles
    chief: np.ndarray  # softmax(raw attention over all tiles) · CTransPath features
    mean_ctranspath: np.ndarray  # mean CTransPath feature over all tiles
    selection: list[dict]  # the top-k tiles: slide, x_um, y_um, score, rank

    def by_kind(self) -> dict[str, np.ndarray]:
        return {"eagle": self.eagle, "chief": self.chief, "mean-ctranspath": self.mean_ctranspath}


def embed_slide(path: Path, models, settings: Settings, mpp_override: float | None = None,
                name: str | None = None, batch_size: int | None = None, progress=None) -> SlideResult:
    """Run CTransPath on every tissue tile, CHIEF on the features, Virchow2 on the top-k tiles."""
    for _, outcome in embed_slides([(Path(path), mpp_override, name)], models, settings, batch_size=batch_size,
                                   progress=progress, prefetch=0):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    raise AssertionError("embed_slides yielded nothing")  # pragma: no cover


def embed_slides(items, models, settings: Settings, batch_size: int | None = None, progress=None,
                 prefetch: int | None = None, on_start=None, stop=None):
    """Embed slides in order, reading each while the ones before it are embedded.

    `items` yields `(path, mpp_override, name_or_None)`; yields `(item, SlideResult)` or
    `(item, error)` per slide: a slide that cannot be read fails alone (its EagleIndexError is
    yielded); a ModelError (weights) and unexpected errors raise.
    Reading happens in reader processes (`settings.tiling.read_workers`, default one per core;
    slides/pool.py), or on threads in this process with `read_workers=0` - same tiles either way.
    `on_start(item)` is called as each slide's embedding starts (progress displays).
    `stop` (a threading.Event, reader processes only): once set, a wait for tiles raises
    `slides.pool.ReadInterrupted` within half a second (an owner's shutdown; a blocked read is
    killed); every slide's reads are bounded by its read lease either way (issue 24 item 3).
    """
    from eagle_index.errors import EagleIndexError, ModelError

    tiling = settings.tiling
    batch = batch_size or _batch_size(models, settings)
    items = ((Path(p), mpp, name) for p, mpp, name in items)
    if tiling.read_workers == 0:
        for item in items:
            if on_start is not None:
                on_start(item)
            started = time.perf_counter()
            try:
                with _ThreadedSource(item[0], item[1], tiling) as source:
                    outcome = _embed(source, item[2] or slide_name(item[0]), models, settings, batch, progress, started)
            except EagleIndexError as exc:
                if isinstance(exc, ModelError):
                    raise
                outcome = exc
            yield item, outcome
        return
    from eagle_index.slides.pool import ReadRestart, shared_pool

    pool = shared_pool(tiling.read_workers, tiling.tile_px, tiling.read_buffer_mb)
    depth = tiling.prefetch_slides if prefetch is None else prefetch
    # Slide i's Virchow2 half waits until slide i+1's CTransPath half is done: its top-k re-read
    # runs in the reader processes meanwhile instead of stalling the GPU (results keep their order).
    deferred: _Deferred | None = None
    try:
        for handle in pool.stream(((p, mpp, (p, mpp, name)) for p, mpp, name in items), tiling, prefetch=depth, stop=stop):
            item = handle.item
            if on_start is not None:
                on_start(item)
            while True:
                started = time.perf_counter()
                try:
                    source = _PooledSource(handle)
                    half = _encode(source, item[2] or slide_name(item[0]), models, settings, batch, progress, started)
                    half.meta = source.meta()
                    t0 = time.perf_counter()
                    half.pixels = handle.read_tiles_async(half.candidates.x_um, half.candidates.y_um)
                    half.timings["virchow2_read"] = time.perf_counter() - t0
                    outcome: object = half
                except ReadRestart:
                    continue  # a reader process died under it: read it again, alone (pool.py)
                except EagleIndexError as exc:
                    if isinstance(exc, ModelError):
                        raise  # missing or wrong weights fail every slide alike
                    outcome = exc
                break
            if deferred is not None:
                done, deferred = deferred, None
                yield done.item, done.finish(models, settings)
            if isinstance(outcome, _Half):
                deferred = _Deferred(item, outcome, tiling)
            else:
                yield item, outcome
        if deferred is not None:
            done, deferred = deferred, None
            yield done.item, done.finish(models, settings)
    finally:
        if deferred is not None:  # the consumer stopped (Ctrl-C, shutdown): free the re-read's slots
            deferred.half.pixels.cancel()


@dataclass
class _Half:
    """A slide after CTransPath and CHIEF, before Virchow2 on its top-k tiles."""

    name: str
    path: Path
    x_um: np.ndarray
    y_um: np.ndarray
    feats: np.ndarray
    scores: np.ndarray
    candidates: aggregation.SlideCandidates
    timings: dict
    started: float
    meta: dict = field(default_factory=dict)
    pixels: object = None  # np.ndarray, or the pool's PendingTiles
    encoded_at: float = 0.0  # when CTransPath + CHIEF were done
    idle: float = 0.0  # waited for the next slide's CTransPath half: not this slide's time


@dataclass
class _Deferred:
    """A slide whose Virchow2 half waits for the next slide's CTransPath half."""

    item: tuple
    half: _Half
    tiling: object

    def finish(self, models, settings: Settings):
        """The SlideResult, or the slide's SlideError if its top-k tiles could not be read."""
        from concurrent.futures.process import BrokenProcessPool

        t0 = time.perf_counter()
        self.half.idle = t0 - self.half.encoded_at
        try:
            pixels = self.half.pixels.result()
        except BrokenProcessPool:  # a reader process died since: read the 25 tiles here (same pixels)
            from eagle_index.slides import open_slide, read_tiles

            try:
                with open_slide(self.item[0], mpp_override=self.item[1], settings=self.tiling) as slide:
                    pixels = read_tiles(slide, self.half.candidates.x_um, self.half.candidates.y_um, self.tiling)
            except SlideError as exc:
                return exc
        except SlideError as exc:
            return exc
        self.half.timings["virchow2_read"] += time.perf_counter() - t0
        self.half.pixels = pixels
        return _complete(self.half, models, settings)


def _batch_size(models, settings: Settings) -> int:
    """32 tiles per CTransPath call on the CPU (as before); on CUDA a batch sized to free memory."""
    device = getattr(models.ctranspath, "device", None)
    if device is None or getattr(device, "type", "cpu") != "cuda":
        return 32
    if settings.inference.gpu_batch:
        return settings.inference.gpu_batch
    import torch

    from eagle_index.models.inference import cuda_batch_size

    free, _ = torch.cuda.mem_get_info(device)
    return cuda_batch_size(free)


class _ThreadedSource:
    """A slide read on threads in this process (read_workers=0): the reader before the pool."""

    def __init__(self, path: Path, mpp_override: float | None, tiling):
        from eagle_index.slides import open_slide

        self.tiling = tiling
        self.slide = open_slide(path, mpp_override=mpp_override, settings=tiling)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.slide.close()

    def tissue_batches(self, batch_size: int):
        from eagle_index.slides import iter_tissue_batches

        return iter_tissue_batches(self.slide, self.tiling, batch_size=batch_size)

    def read_tiles(self, x_um, y_um):
        from eagle_index.slides import read_tiles

        return read_tiles(self.slide, x_um, y_um, self.tiling)

    def meta(self) -> dict:
        from eagle_index.slides.tiling import read_level

        s = self.slide
        return dict(mpp=s.mpp, mpp_source=s.mpp_source, level=read_level(s, self.tiling.target_mpp),
                    width_px=s.dimensions[0], height_px=s.dimensions[1], format=s.format)


class _PooledSource:
    """A slide read by the reader processes (slides/pool.py), planned and read ahead."""

    def __init__(self, handle):
        self.handle = handle

    def tissue_batches(self, batch_size: int):
        return self.handle.tissue_batches(batch_size)

    def read_tiles(self, x_um, y_um):
        return self.handle.read_tiles(x_um, y_um)

    def meta(self) -> dict:
        p = self.handle.plan
        return dict(mpp=p.mpp, mpp_source=p.mpp_source, level=p.level, width_px=p.width_px, height_px=p.height_px,
                    format=p.format)


def _embed(source, name: str, models, settings: Settings, batch_size: int, progress, started: float) -> SlideResult:
    """One slide from its tile source, start to end (the in-process reader)."""
    half = _encode(source, name, models, settings, batch_size, progress, started)
    t0 = time.perf_counter()
    half.pixels = source.read_tiles(half.candidates.x_um, half.candidates.y_um)
    half.timings["virchow2_read"] = time.perf_counter() - t0
    half.meta = source.meta()
    return _complete(half, models, settings)


def _encode(source, name: str, models, settings: Settings, batch_size: int, progress, started: float) -> _Half:
    """CTransPath per batch as tiles arrive, then CHIEF and the slide's top-k candidates."""
    from eagle_index.models.inference import FeatureStream

    path = getattr(source, "slide", None) and source.slide.path or source.handle.path
    # read_wait: time the consumer waited for tile batches (opening the slide and the tissue
    # mask included); the readers work ahead while CTransPath runs.
    timings = dict.fromkeys(("read_wait", "ctranspath", "chief", "virchow2_read", "virchow2"), 0.0)
    features = FeatureStream(models.ctranspath, settings.inference.precision, _pinned_buffers(models))
    xs, ys = [], []
    t0 = time.perf_counter()
    for batch in source.tissue_batches(batch_size):
        t1 = time.perf_counter()
        timings["read_wait"] += t1 - t0
        features.add(batch.images)
        xs.append(batch.x_um)
        ys.append(batch.y_um)
        if progress is not None:
            progress(len(batch))
        t0 = time.perf_counter()
        timings["ctranspath"] += t0 - t1
    timings["read_wait"] += time.perf_counter() - t0
    if not xs:
        raise SlideError(f"{path}: no tissue tiles found (Canny rule kept none of the tiles at {settings.tiling.target_mpp} µm/px)")
    t0 = time.perf_counter()
    # As the reference stores them (STAMP feature files are float16) and CHIEF then reads them:
    # rounded to float16, kept as float32 values. Near-ties in CHIEF's scores then break as
    # they do on the reference's features (see docs/pipeline.md, "Precision").
    feats_all = features.result().astype(FEATURE_DTYPE).astype(np.float32)
    timings["ctranspath"] += time.perf_counter() - t0  # on CUDA: waiting for the queued batches
    x_um, y_um = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    t0 = time.perf_counter()
    scores = models.chief.raw_attention(feats_all).astype(np.float32)
    timings["chief"] = time.perf_counter() - t0
    candidates = aggregation.slide_candidates(name, scores, x_um, y_um, settings.eagle.top_k)
    return _Half(name, Path(path), x_um, y_um, feats_all, scores, candidates, timings, started,
                 encoded_at=time.perf_counter())


def _complete(half: _Half, models, settings: Settings) -> SlideResult:
    """Virchow2 on the top-k tiles (already read): the slide's result."""
    t1 = time.perf_counter()
    half.candidates.class_tokens = models.virchow2.encode(half.pixels).astype(np.float32)
    timings = half.timings
    timings["virchow2"] = time.perf_counter() - t1
    result = SlideResult(name=half.name, x_um=half.x_um, y_um=half.y_um, feats=half.feats, scores=half.scores,
                         candidates=half.candidates, tile_um=settings.tiling.tile_um, tile_px=settings.tiling.tile_px,
                         timings=timings, **half.meta)
    timings["total"] = time.perf_counter() - half.started - half.idle
    log.info("embedded %s: %d tiles in %.2fs (%s)", half.path.name, result.n_tiles, timings["total"],
             ", ".join(f"{k} {v:.2f}s" for k, v in timings.items() if k != "total"))
    return result


def _pinned_buffers(models) -> list:
    """The CUDA pinned upload buffers, kept with the models so every slide reuses them."""
    encoder = models.ctranspath
    buffers = getattr(encoder, "_pinned_ring", None)
    if buffers is None:
        buffers = []
        try:
            encoder._pinned_ring = buffers
        except AttributeError:  # pragma: no cover - a read-only stand-in: fresh buffers per slide
            pass
    return buffers


def aggregate_patient(slides: list[SlideResult], top_k: int) -> PatientVectors:
    """Patient vectors from per-slide results (freshly computed or read back from artifacts)."""
    if not slides:
        raise ValueError("a patient needs at least one slide")
    candidates = [s.candidates for s in slides]
    eagle, selection = aggregation.eagle_patient_vector(candidates, top_k)
    scores = np.concatenate([s.scores for s in slides])
    feats = np.concatenate([s.feats for s in slides])
    chosen = [
        {
            "rank": rank,
            "slide": candidates[s].slide_name,
            "x_um": float(candidates[s].x_um[r]),
            "y_um": float(candidates[s].y_um[r]),
            "score": float(candidates[s].scores[r]),
        }
        for rank, (s, r) in enumerate(zip(selection.slide, selection.row), start=1)
    ]
    return PatientVectors(eagle, aggregation.attention_pooled(scores, feats), aggregation.mean_pooled(feats), chosen)


def slide_name(path: Path) -> str:
    """A slide's name: its file name without the slide extension (as STAMP names feature files)."""
    from eagle_index.formats.tables import SlideRow

    return SlideRow("", Path(path).name).stem
