"""Vector signatures: which weights and which pipeline parameters made a vector.

Two vectors may share an index only if their signatures are equal. A signature is a short,
stable string `<kind>-v1:<16 hex>` — the start of the SHA-256 of a canonical JSON of the
relevant weight digests and parameters — prefixed with `tiny:` (or the preset name) for
anything that did not come from the official weights, so demo vectors never mix with real
ones. It is computable from digests alone, so importers of existing features (STAMP files
that name CTransPath by the 8-hex prefix `7c998680`) get the same signature as vectors we
compute ourselves with the same weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping

from eagle_index.errors import ModelError
from eagle_index.models.registry import expand_digest, specs_for

if TYPE_CHECKING:
    from eagle_index.config import Settings

SIGNATURE_VERSION = 1

KIND_MODELS: Mapping[str, tuple[str, ...]] = {
    "eagle": ("ctranspath", "chief", "virchow2"),
    "chief": ("ctranspath", "chief"),
    "mean-ctranspath": ("ctranspath",),
}
"""Which models' weights each vector kind depends on."""

KIND_DIM_MODEL: Mapping[str, str] = {"eagle": "virchow2", "chief": "chief", "mean-ctranspath": "ctranspath"}
"""Whose output dimension a vector of each kind has."""

_TILING_PARAMS = {"target_mpp": float, "tile_px": int, "canny_low": int, "canny_high": int}
KIND_PARAMS: Mapping[str, Mapping[str, type]] = {
    "eagle": {**_TILING_PARAMS, "top_k": int},
    "chief": dict(_TILING_PARAMS),
    "mean-ctranspath": dict(_TILING_PARAMS),
}
"""Required pipeline parameters per kind (others do not change such vectors)."""

OPTIONAL_PARAMS: Mapping[str, Any] = {"min_edge_ratio": 0.02}
"""Parameters with a default that is filled in when absent (so omitting it changes nothing)."""


def vector_kinds() -> tuple[str, ...]:
    return tuple(KIND_MODELS)


def _check_kind(kind: str) -> None:
    if kind not in KIND_MODELS:
        raise ModelError(f"unknown vector kind {kind!r}; known: {', '.join(KIND_MODELS)}")


def pipeline_params(settings: "Settings", kind: str = "eagle") -> dict[str, Any]:
    """The parameters of `settings` that matter for vectors of `kind`."""
    _check_kind(kind)
    tiling = settings.tiling
    params: dict[str, Any] = {
        "target_mpp": tiling.target_mpp,
        "tile_px": tiling.tile_px,
        "canny_low": tiling.canny_low,
        "canny_high": tiling.canny_high,
        "min_edge_ratio": tiling.min_edge_ratio,
    }
    if "top_k" in KIND_PARAMS[kind]:
        params["top_k"] = settings.eagle.top_k
    # CTransPath features rounded to float16 before CHIEF and pooling, as the reference stores them
    # (eagle_index.pipeline.FEATURE_DTYPE); vectors made before this rule carry no such parameter.
    params["features"] = "float16"
    if settings.inference.precision != "fp32":  # opt-in reduced precision: other features, its own signature
        params["precision"] = settings.inference.precision
    if tiling.dct_scaled_decode:  # opt-in reduced-scale JPEG decoding: other pixels, its own signature
        params["decode"] = "dct-scaled"
    return params


def canonical_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise parameters so that 2 and 2.0 (or 0.02 and 0.0200000001) hash alike."""
    _check_kind(kind)
    required = KIND_PARAMS[kind]
    missing = [k for k in required if k not in params]
    if missing:
        raise ModelError(f"signature of {kind!r} vectors needs parameters: {', '.join(missing)}")
    known = {k for kind_params in KIND_PARAMS.values() for k in kind_params}
    out: dict[str, Any] = {}
    for key, value in {**OPTIONAL_PARAMS, **params}.items():
        if key in known and key not in required:
            continue  # a pipeline parameter that does not change this kind (top_k for 'chief')
        typ = required.get(key) or (float if key in OPTIONAL_PARAMS or isinstance(value, float) else None)
        out[key] = _normalise(key, value, typ)
    return dict(sorted(out.items()))


def _normalise(key: str, value: Any, typ: type | None) -> Any:
    if typ is int:
        if isinstance(value, bool) or not float(value).is_integer():
            raise ModelError(f"parameter {key} must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        return round(float(value), 6)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    raise ModelError(f"parameter {key} must be a number or string, got {type(value).__name__}")


def canonical_digests(kind: str, digests: Mapping[str, str], preset: str = "default") -> dict[str, str]:
    """The digests of the models `kind` depends on; official 8+ hex prefixes are expanded."""
    _check_kind(kind)
    needed = KIND_MODELS[kind]
    missing = [m for m in needed if not digests.get(m)]
    if missing:
        raise ModelError(f"signature of {kind!r} vectors needs the weight digests of: {', '.join(missing)}")
    out = {}
    for model_id in needed:
        value = str(digests[model_id]).strip().lower()
        out[model_id] = expand_digest(model_id, value) if preset == "default" else value
    return out


def signature_prefix(preset: str) -> str:
    return "" if preset == "default" else f"{preset}:"


def provenance_for_kind(
    kind: str,
    digests: Mapping[str, str],
    params: Mapping[str, Any],
    *,
    preset: str = "default",
) -> dict[str, Any]:
    """The JSON provenance record of a vector kind, including its signature."""
    specs = specs_for(preset)
    digs = canonical_digests(kind, digests, preset)
    pars = canonical_params(kind, params)
    hashed = {"version": SIGNATURE_VERSION, "kind": kind, "preset": preset, "digests": digs, "params": pars}
    blob = json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode()
    signature = f"{signature_prefix(preset)}{kind}-v{SIGNATURE_VERSION}:{hashlib.sha256(blob).hexdigest()[:16]}"
    models = {}
    for model_id, digest in digs.items():
        spec = specs[model_id]
        models[model_id] = {
            "name": spec.name,
            "digest": digest,
            "expected_digest": spec.digest,
            "digest_matches": None if spec.digest is None else digest == spec.digest,
            "weights_file": spec.weights_file,
            "source": spec.source,
            "licence": spec.licence,
            "dim": spec.dim,
        }
    return {
        "signature": signature,
        "signature_version": SIGNATURE_VERSION,
        "kind": kind,
        "preset": preset,
        "dim": specs[KIND_DIM_MODEL[kind]].dim,
        "models": models,
        "params": pars,
        "code_version": _code_version(),
    }


def signature_for_kind(kind: str, digests: Mapping[str, str], params: Mapping[str, Any], *, preset: str = "default") -> str:
    """Signature of `kind` vectors from weight digests (full or official 8+ hex prefix) and parameters.

    Works without loading any model, e.g. for imported STAMP features:
    `signature_for_kind("mean-ctranspath", {"ctranspath": "7c998680"}, params)`.
    """
    return provenance_for_kind(kind, digests, params, preset=preset)["signature"]


def signature_preset(signature: str) -> str:
    """'default' for official-weight signatures, else the preset named in the prefix ('tiny')."""
    head, _, rest = signature.partition(":")
    return head if rest.count(":") == 1 else "default"


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eagle-index")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
