"""The EAGLE pipeline: slide file(s) -> per-slide results -> patient vectors. No storage here.

Per slide: EAGLE tissue tiles (eagle_index.slides) -> CTransPath features of every tile ->
CHIEF raw attention -> the slide's top-k candidates -> Virchow2 class tokens of only those
k tiles, read again from the slide pyramid at 2 µm/px. Per patient: top-k over the union of
its slides' candidates, mean of their class tokens (see eagle_index.aggregation for the
tie rule). Tile reading runs on a thread pool ahead of the model, so I/O overlaps compute.
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
                name: str | None = None, batch_size: int = 32, progress=None) -> SlideResult:
    """Run CTransPath on every tissue tile, CHIEF on the features, Virchow2 on the top-k tiles."""
    from eagle_index.slides import iter_tissue_batches, open_slide, read_tiles

    path = Path(path)
    name = name or slide_name(path)
    # read_wait: time the consumer waited for tile batches (opening the slide and the tissue
    # mask included); the reader works ahead on its threads while CTransPath runs.
    timings = dict.fromkeys(("read_wait", "ctranspath", "chief", "virchow2_read", "virchow2"), 0.0)
    started = time.perf_counter()
    with open_slide(path, mpp_override=mpp_override, settings=settings.tiling) as slide:
        feats, xs, ys = [], [], []
        t0 = time.perf_counter()
        timings["read_wait"] = t0 - started
        for batch in iter_tissue_batches(slide, settings.tiling, batch_size=batch_size):
            t1 = time.perf_counter()
            timings["read_wait"] += t1 - t0
            feats.append(models.ctranspath.encode(batch.images))
            xs.append(batch.x_um)
            ys.append(batch.y_um)
            if progress is not None:
                progress(len(batch))
            t0 = time.perf_counter()
            timings["ctranspath"] += t0 - t1
        timings["read_wait"] += time.perf_counter() - t0
        if not feats:
            raise SlideError(f"{path}: no tissue tiles found (Canny rule kept none of the tiles at {settings.tiling.target_mpp} µm/px)")
        # As the reference stores them (STAMP feature files are float16) and CHIEF then reads them:
        # rounded to float16, kept as float32 values. Near-ties in CHIEF's scores then break as
        # they do on the reference's features (see docs/pipeline.md, "Precision").
        feats_all = np.concatenate(feats).astype(FEATURE_DTYPE).astype(np.float32)
        x_um, y_um = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
        t0 = time.perf_counter()
        scores = models.chief.raw_attention(feats_all).astype(np.float32)
        timings["chief"] = time.perf_counter() - t0
        candidates = aggregation.slide_candidates(name, scores, x_um, y_um, settings.eagle.top_k)
        t0 = time.perf_counter()
        pixels = read_tiles(slide, candidates.x_um, candidates.y_um, settings.tiling)
        t1 = time.perf_counter()
        timings["virchow2_read"] = t1 - t0
        candidates.class_tokens = models.virchow2.encode(pixels).astype(np.float32)
        timings["virchow2"] = time.perf_counter() - t1
        result = SlideResult(
            name=name, x_um=x_um, y_um=y_um, feats=feats_all, scores=scores, candidates=candidates,
            tile_um=settings.tiling.tile_um, tile_px=settings.tiling.tile_px, mpp=slide.mpp,
            mpp_source=slide.mpp_source, level=_read_level(slide, settings), width_px=slide.dimensions[0],
            height_px=slide.dimensions[1], format=slide.format, timings=timings,
        )
    timings["total"] = time.perf_counter() - started
    log.info("embedded %s: %d tiles in %.2fs (%s)", path.name, result.n_tiles, timings["total"],
             ", ".join(f"{k} {v:.2f}s" for k, v in timings.items() if k != "total"))
    return result


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


def _read_level(slide, settings: Settings) -> int | None:
    from eagle_index.slides.tiling import read_level

    return read_level(slide, settings.tiling.target_mpp)
