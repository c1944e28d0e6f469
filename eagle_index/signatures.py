"""Vector signatures and patient ids derived from names.

A signature says which models and parameters made a vector; vectors of different signatures
never share an index. Imported vectors get the signature of the official models when the
file says (or the format implies) they were made with them, so they can be searched together
with vectors this installation computes; otherwise a signature that names the import source.
"""

from __future__ import annotations

import hashlib
import json
import re

from eagle_index.config import Settings

# Virchow2 has no digest published by the references; "paige-ai/Virchow2" names the hub release.
OFFICIAL_DIGEST_PREFIX = {"ctranspath": "7c998680", "chief": "6a46d200", "virchow2": "paige-ai/Virchow2"}
TCGA_PATIENT = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", re.IGNORECASE)


def patient_from_name(name: str, pattern: re.Pattern | None = None) -> str:
    """Patient id from a slide name: the regex's first group (TCGA default), else the name."""
    match = (pattern or TCGA_PATIENT).match(name)
    return match.group(1) if match else name


KIND_MODELS = {"mean-ctranspath": ("ctranspath",), "chief": ("ctranspath", "chief"), "eagle": ("ctranspath", "chief", "virchow2")}
SIGNATURE_VERSION = "v1"


def signature_for_kind(kind: str, digests: dict[str, str], params: dict) -> str:
    """Stable short signature of a vector kind from the weight digests it depends on.

    Digests are cut to their first 8 hex digits (the form STAMP records), so vectors whose
    provenance names only that prefix match vectors computed from the full file. A digest
    that is not hex (the `tiny` preset's "tiny-…") yields a signature prefixed with it, so
    such vectors never share an index with real ones.
    """
    needed = KIND_MODELS.get(kind)
    if needed is None:
        raise ValueError(f"unknown vector kind {kind!r}")
    missing = [m for m in needed if m not in digests]
    if missing:
        raise ValueError(f"signature of {kind!r} needs digests of {', '.join(missing)}")
    short = {m: str(digests[m])[:8] if re.fullmatch(r"[0-9a-f]{8,}", str(digests[m])) else str(digests[m]) for m in needed}
    relevant = {"tiling": params.get("tiling", {}), "eagle": params.get("eagle", {})} if kind == "eagle" else {"tiling": params.get("tiling", {})}
    blob = json.dumps({"kind": kind, "digests": short, "params": relevant, "version": SIGNATURE_VERSION}, sort_keys=True)
    prefix = "tiny:" if any(str(d).startswith("tiny") for d in short.values()) else ""
    return f"{prefix}{kind}-{SIGNATURE_VERSION}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def imported(kind: str, layout: str, extractor: str | None, chief=None, virchow2_extractor: str | None = None) -> str:
    """Signature for vectors read from files this installation did not compute."""
    params = Settings().tiling, Settings().eagle
    digests: dict[str, str] = {}
    ctp = _ctranspath_digest(layout, extractor)
    if kind in ("mean-ctranspath", "chief", "eagle"):
        if ctp is None:
            return f"{kind}:import:{_short(str(extractor))}"
        digests["ctranspath"] = ctp
    if kind in ("chief", "eagle"):
        digests["chief"] = chief.digest if chief is not None else OFFICIAL_DIGEST_PREFIX["chief"]
    if kind == "eagle":
        vir = _virchow2_digest(layout, virchow2_extractor)
        if vir is None:
            return f"{kind}:import:{_short(str(virchow2_extractor))}"
        digests["virchow2"] = vir
    if kind not in ("mean-ctranspath", "chief", "eagle"):
        return f"{kind}:import:{_short(f'{layout}|{extractor}')}"
    return signature_for_kind(kind, digests, {"tiling": params[0].model_dump(), "eagle": params[1].model_dump()})


def _ctranspath_digest(layout: str, extractor: str | None) -> str | None:
    if layout == "eagle" or (extractor and "ctranspath-7c998680" in extractor) or extractor in ("ctranspath", "eagle", "chief"):
        return OFFICIAL_DIGEST_PREFIX["ctranspath"]
    return None


def _virchow2_digest(layout: str, extractor: str | None) -> str | None:
    if layout == "eagle" or (extractor and "virchow2" in extractor.lower()):
        return OFFICIAL_DIGEST_PREFIX["virchow2"]
    return None
