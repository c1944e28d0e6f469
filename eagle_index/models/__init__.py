"""Models of the EAGLE pipeline: CTransPath, CHIEF and Virchow2, plus a `tiny` preset.

Importing this package is cheap (no torch): the registry holds frozen specs; weights are read
only by `load_models`. Typical use::

    models = load_models(settings)                 # strict loading, digests checked
    feats = models.ctranspath.encode(tiles_uint8)  # float32 [B, 768]
    scores = models.chief.raw_attention(feats)     # float32 [B]
    tokens = models.virchow2.encode(top_tiles)     # float32 [k, 1280] (class tokens)
    sig = models.signature("eagle")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

from eagle_index.errors import ModelError
from eagle_index.models.registry import MODEL_IDS, PRESETS, REGISTRY, InputTransform, ModelSpec, specs_for
from eagle_index.models.signature import (
    KIND_MODELS,
    pipeline_params,
    provenance_for_kind,
    signature_for_kind,
    signature_preset,
    vector_kinds,
)

if TYPE_CHECKING:
    from eagle_index.config import Settings
    from eagle_index.models.inference import ClassTokenEncoder, SlideEncoder, TileEncoder

__all__ = [
    "MODEL_IDS",
    "PRESETS",
    "REGISTRY",
    "InputTransform",
    "LoadedModels",
    "ModelSpec",
    "KIND_MODELS",
    "load_models",
    "pipeline_params",
    "provenance_for_kind",
    "signature_for_kind",
    "signature_preset",
    "specs_for",
    "vector_kinds",
]

log = logging.getLogger(__name__)


class LoadedModels:
    """The loaded models of one preset, with the pipeline parameters that sign their vectors."""

    def __init__(self, preset: str, device: str, params: dict[str, Any], encoders: dict[str, Any]) -> None:
        self.preset = preset
        self.device = device
        self.params = dict(params)
        self._encoders = dict(encoders)

    def _get(self, model_id: str):
        try:
            return self._encoders[model_id]
        except KeyError:
            raise ModelError(f"{model_id} was not loaded (load_models(..., only=...) left it out)") from None

    @property
    def ctranspath(self) -> "TileEncoder":
        return self._get("ctranspath")

    @property
    def chief(self) -> "SlideEncoder":
        return self._get("chief")

    @property
    def virchow2(self) -> "ClassTokenEncoder":
        return self._get("virchow2")

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(self._encoders)

    @property
    def digests(self) -> dict[str, str]:
        return {model_id: enc.digest for model_id, enc in self._encoders.items()}

    def signature(self, kind: str = "eagle") -> str:
        """Signature of vectors of `kind` ('eagle', 'chief', 'mean-ctranspath') made with these models."""
        return signature_for_kind(kind, self.digests, self.params, preset=self.preset)

    def provenance(self, kind: str = "eagle") -> dict[str, Any]:
        """JSON provenance of `kind` vectors: signature, digests, sources, parameters, device."""
        record = provenance_for_kind(kind, self.digests, self.params, preset=self.preset)
        record["device"] = self.device
        for model_id, info in record["models"].items():
            enc = self._encoders[model_id]
            info["path"] = str(enc.path) if enc.path is not None else None
            info["origin"] = enc.origin
        return record

    def __repr__(self) -> str:
        return f"LoadedModels(preset={self.preset!r}, device={self.device!r}, loaded={list(self._encoders)})"


def load_models(
    settings: "Settings",
    *,
    only: Iterable[str] | None = None,
    allow_digest_mismatch: bool | None = None,
    download: bool = False,
    device: str | None = None,
) -> LoadedModels:
    """Locate, verify and load the models of `settings.models` ('default' or 'tiny').

    Every missing file is reported at once, before anything is loaded. `download=True` fetches
    missing hub-hosted weights first (network; `HF_TOKEN` for Virchow2). A digest mismatch is a
    `ModelError` unless `allow_digest_mismatch` (default: `settings.allow_digest_mismatch`, env
    `EAGLE_INDEX_ALLOW_DIGEST_MISMATCH=1`).
    """
    from eagle_index.models import weights
    from eagle_index.models.inference import ClassTokenEncoder, SlideEncoder, TileEncoder
    from eagle_index.models.loading import load_module
    from eagle_index.models.virchow2 import class_tokens

    specs = specs_for(settings.models)
    ids = tuple(only) if only is not None else MODEL_IDS
    unknown = [i for i in ids if i not in specs]
    if unknown:
        raise ModelError(f"unknown model id(s): {', '.join(unknown)}; known: {', '.join(specs)}")
    if allow_digest_mismatch is None:
        allow_digest_mismatch = settings.allow_digest_mismatch

    locations = {i: weights.locate(specs[i], settings) for i in ids}
    if download:
        for i, loc in locations.items():
            if not loc.found and loc.hub is not None:
                weights.download(loc.spec, settings)
                locations[i] = weights.locate(loc.spec, settings)
    weights.require_all(locations.values())

    device = device or settings.resolved_device()
    encoders: dict[str, Any] = {}
    for i, loc in locations.items():
        loaded = load_module(loc, device=device, allow_digest_mismatch=allow_digest_mismatch,
                             digest_cache=settings.weights_cache_dir)
        if loaded.digest_pinned and not loaded.digest_ok:
            log.warning("%s: digest mismatch allowed (%s); its vectors get their own signature", loc.spec.name, loaded.digest)
        elif not loaded.digest_pinned and loc.origin != "generated":
            log.info("%s: no pinned digest; recording %s", loc.spec.name, loaded.digest)
        common = dict(digest=loaded.digest, path=loaded.path, origin=loaded.origin)
        if loc.spec.role == "slide":
            encoders[i] = SlideEncoder(loc.spec, loaded.module, **common)
        elif loc.spec.id == "virchow2":
            encoders[i] = ClassTokenEncoder(loc.spec, loaded.module, forward=class_tokens, **common)
        else:
            encoders[i] = TileEncoder(loc.spec, loaded.module, **common)
    return LoadedModels(settings.models, device, pipeline_params(settings, "eagle"), encoders)
