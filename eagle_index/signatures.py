"""Signatures of imported vectors, and patient ids derived from slide names.

A signature says which weights and parameters made a vector (eagle_index.models.signature);
vectors of different signatures never share an index. Imported vectors get the signature of
the official models when the file says (or its format implies) they were made with them, so
they are searched together with vectors this installation computes from the same weights;
otherwise a signature that names the import source, so they stay apart.
"""

from __future__ import annotations

import hashlib
import re

from eagle_index.config import Settings

# CTransPath and CHIEF: 8-hex prefixes of the pinned SHA-256 (the form STAMP records).
# Virchow2's file digest is not published; the hub release name stands in for it.
OFFICIAL_DIGESTS = {"ctranspath": "7c998680", "chief": "6a46d200", "virchow2": "hub:paige-ai/Virchow2"}
TCGA_PATIENT = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", re.IGNORECASE)


def patient_from_name(name: str, pattern: re.Pattern | None = None) -> str:
    """Patient id from a slide name: the regex's first group (TCGA default), else the name."""
    match = (pattern or TCGA_PATIENT).match(name)
    return match.group(1) if match else name


def _source_signature(kind: str, what: str) -> str:
    return f"{kind}:import:{hashlib.sha256(what.encode()).hexdigest()[:12]}"


def imported(kind: str, layout: str, extractor: str | None, chief=None, virchow2_extractor: str | None = None) -> str:
    """Signature for vectors read from files this installation did not compute."""
    from eagle_index.models import KIND_MODELS, pipeline_params, signature_for_kind

    if kind not in KIND_MODELS:
        return _source_signature(kind, f"{layout}|{extractor}")
    digests: dict[str, str] = {}
    if not _is_official_ctranspath(layout, extractor):
        return _source_signature(kind, str(extractor))
    digests["ctranspath"] = OFFICIAL_DIGESTS["ctranspath"]
    preset = "default"
    if chief is not None:
        digests["chief"] = chief.digest
        preset = getattr(chief.spec, "preset", "default") or "default"
    elif kind != "mean-ctranspath":
        digests["chief"] = OFFICIAL_DIGESTS["chief"]
    if kind == "eagle":
        if not (layout == "eagle" or (virchow2_extractor and "virchow2" in virchow2_extractor.lower())):
            return _source_signature(kind, str(virchow2_extractor))
        digests["virchow2"] = OFFICIAL_DIGESTS["virchow2"]
    return signature_for_kind(kind, digests, pipeline_params(Settings(), kind), preset=preset)


def _is_official_ctranspath(layout: str, extractor: str | None) -> bool:
    if layout == "eagle":  # EAGLE output files are made with the original CTransPath release
        return True
    return bool(extractor) and ("ctranspath-7c998680" in extractor or extractor in ("ctranspath", "eagle", "chief"))
