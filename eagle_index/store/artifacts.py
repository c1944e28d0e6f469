"""Per-slide HDF5 artifacts: everything needed to re-aggregate a patient without the slide.

Layout (one file per slide, written to a temp file then renamed):
- `feats` (N, D) float32 and `coords` (N, 2) float32 (x, y) µm, with the STAMP v2 attrs
  (`unit="um"`, `tile_size_um`, `tile_size_px`, `extractor`, `feat_type="tile"`). Features are
  kept in float32 (STAMP writes float16) so attention and patient vectors recompute exactly.
- `attention` (N,) float32: CHIEF raw (pre-softmax) attention of each tile.
- group `candidates`: `tile_index`, `x_um`, `y_um`, `scores`, `class_tokens` (k, 1280) of the
  slide's top-k tiles.
- attrs: `eagle_index_artifact` (format version), slide name, MPP and its source, level, size,
  and the JSON provenance (model digests, parameters, signature).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eagle_index.aggregation import SlideCandidates
from eagle_index.errors import InputError
from eagle_index.atomic import atomic_path
from eagle_index.formats.h5util import open_h5, read_dataset, text_attr
from eagle_index.pipeline import SlideResult

ARTIFACT_FORMAT = 1


def write_slide_artifact(path: Path, result: SlideResult, provenance: dict | None = None) -> Path:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("feats", data=np.asarray(result.feats, dtype=np.float32))  # no 6 MB copy when float32
            handle.create_dataset("coords", data=np.stack([result.x_um, result.y_um], axis=1).astype(np.float32))
            handle.create_dataset("attention", data=result.scores.astype(np.float32))
            group = handle.create_group("candidates")
            cand = result.candidates
            group.create_dataset("tile_index", data=cand.tile_index.astype(np.int64))
            group.create_dataset("x_um", data=cand.x_um.astype(np.float64))
            group.create_dataset("y_um", data=cand.y_um.astype(np.float64))
            group.create_dataset("scores", data=cand.scores.astype(np.float32))
            group.create_dataset("class_tokens", data=cand.class_tokens.astype(np.float32))
            attrs = {
                "unit": "um", "tile_size_um": float(result.tile_um), "tile_size_px": int(result.tile_px),
                "extractor": "ctranspath", "feat_type": "tile", "eagle_index_artifact": ARTIFACT_FORMAT,
                "slide_name": result.name,
            }
            for key in ("mpp", "mpp_source", "level", "width_px", "height_px", "format"):
                value = getattr(result, key)
                if value is not None:
                    attrs[key] = value
            if provenance:
                attrs["provenance"] = json.dumps(provenance, sort_keys=True)
            handle.attrs.update(attrs)
    return Path(path)


def _candidates(handle, path: Path) -> SlideCandidates:
    if "eagle_index_artifact" not in handle.attrs:
        raise InputError(f"{path}: not an eagle-index slide artifact")
    group = handle["candidates"]
    return SlideCandidates(
        slide_name=text_attr(handle.attrs["slide_name"]),
        tile_index=group["tile_index"][()], x_um=group["x_um"][()], y_um=group["y_um"][()],
        scores=group["scores"][()], class_tokens=group["class_tokens"][()],
    )


def read_slide_candidates(path: Path) -> SlideCandidates:
    """Only the slide's top-k candidates (cheap: no tile features are read)."""
    path = Path(path)
    with open_h5(path) as handle:
        return _candidates(handle, path)


def read_slide_artifact(path: Path) -> SlideResult:
    path = Path(path)
    with open_h5(path) as handle:
        cand = _candidates(handle, path)
        coords = read_dataset(handle, "coords", path)
        attrs = {k: handle.attrs[k] for k in handle.attrs}
        return SlideResult(
            name=cand.slide_name, x_um=coords[:, 0].astype(np.float64), y_um=coords[:, 1].astype(np.float64),
            feats=read_dataset(handle, "feats", path).astype(np.float32, copy=False),
            scores=read_dataset(handle, "attention", path).astype(np.float32, copy=False), candidates=cand,
            tile_um=float(attrs["tile_size_um"]), tile_px=int(attrs["tile_size_px"]),
            mpp=float(attrs["mpp"]) if "mpp" in attrs else None, mpp_source=text_attr(attrs.get("mpp_source")),
            level=int(attrs["level"]) if "level" in attrs else None,
            width_px=int(attrs["width_px"]) if "width_px" in attrs else None,
            height_px=int(attrs["height_px"]) if "height_px" in attrs else None,
            format=text_attr(attrs.get("format")),
        )


def as_stored(result: SlideResult) -> SlideResult:
    """What `read_slide_artifact` returns for the artifact `write_slide_artifact` makes of `result`:
    the same dtypes and roundings (coordinates through float32, candidates named after the slide),
    without writing or reading the file. The owner aggregates a new slide from this view, so its
    patient vectors are bit-identical to those read back from the artifact. Arrays already of the
    stored dtype are shared with `result`, not copied (neither is changed afterwards)."""
    cand = result.candidates

    def stored(array, dtype):
        return np.asarray(array).astype(dtype, copy=False)

    x_um = stored(stored(result.x_um, np.float32), np.float64)
    y_um = stored(stored(result.y_um, np.float32), np.float64)
    candidates = SlideCandidates(
        slide_name=str(result.name), tile_index=stored(cand.tile_index, np.int64), x_um=stored(cand.x_um, np.float64),
        y_um=stored(cand.y_um, np.float64), scores=stored(cand.scores, np.float32), class_tokens=stored(cand.class_tokens, np.float32),
    )
    return SlideResult(
        name=str(result.name), x_um=x_um, y_um=y_um, feats=stored(result.feats, np.float32),
        scores=stored(result.scores, np.float32), candidates=candidates, tile_um=float(result.tile_um), tile_px=int(result.tile_px),
        mpp=float(result.mpp) if result.mpp is not None else None, mpp_source=result.mpp_source,
        level=int(result.level) if result.level is not None else None,
        width_px=int(result.width_px) if result.width_px is not None else None,
        height_px=int(result.height_px) if result.height_px is not None else None, format=result.format,
    )


def artifact_provenance(path: Path) -> dict:
    with open_h5(path) as handle:
        raw = text_attr(handle.attrs.get("provenance"))
    return json.loads(raw) if raw else {}
