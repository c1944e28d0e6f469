"""Signatures are stable, computable from digests alone, and never mix presets or parameters."""

from __future__ import annotations

import pytest

from eagle_index.config import Settings
from eagle_index.errors import ModelError
from eagle_index.models import REGISTRY, load_models, pipeline_params, provenance_for_kind, signature_for_kind, signature_preset
from eagle_index.models.signature import KIND_MODELS

PARAMS = {"target_mpp": 2.0, "tile_px": 224, "canny_low": 40, "canny_high": 100, "top_k": 25}
OFFICIAL = {k: (s.digest or "ab" * 32) for k, s in REGISTRY.items()}


def test_signature_format_is_pinned():
    """Changing the hashing would orphan every stored vector: this value must not move."""
    sig = signature_for_kind("mean-ctranspath", {"ctranspath": "7c998680"}, PARAMS)
    assert sig == "mean-ctranspath-v1:e88393c3bb30bcdf"


def test_stamp_digest_prefix_equals_full_digest():
    full = signature_for_kind("mean-ctranspath", {"ctranspath": REGISTRY["ctranspath"].digest}, PARAMS)
    assert signature_for_kind("mean-ctranspath", {"ctranspath": "7c998680"}, PARAMS) == full
    # CHIEF's own CTransPath checkpoint (1646f230...) is other weights: another signature.
    assert signature_for_kind("mean-ctranspath", {"ctranspath": "1646f230"}, PARAMS) != full


def test_only_relevant_digests_and_params_count():
    base = signature_for_kind("chief", OFFICIAL, PARAMS)
    assert signature_for_kind("chief", {**OFFICIAL, "virchow2": "ff" * 32}, PARAMS) == base
    assert signature_for_kind("chief", OFFICIAL, {**PARAMS, "top_k": 5}) == base
    assert signature_for_kind("eagle", OFFICIAL, {**PARAMS, "top_k": 5}) != signature_for_kind("eagle", OFFICIAL, PARAMS)
    assert signature_for_kind("chief", OFFICIAL, {**PARAMS, "target_mpp": 1.0}) != base
    assert signature_for_kind("chief", OFFICIAL, {**PARAMS, "canny_high": 120}) != base


def test_numbers_are_normalised_and_defaults_filled():
    a = signature_for_kind("eagle", OFFICIAL, PARAMS)
    assert signature_for_kind("eagle", OFFICIAL, {**PARAMS, "target_mpp": 2, "tile_px": 224.0}) == a
    assert signature_for_kind("eagle", OFFICIAL, {**PARAMS, "min_edge_ratio": 0.02}) == a
    assert signature_for_kind("eagle", OFFICIAL, {**PARAMS, "min_edge_ratio": 0.05}) != a
    assert signature_for_kind("eagle", {k: v.upper() for k, v in OFFICIAL.items()}, PARAMS) == a


def test_kinds_and_presets_never_collide():
    sigs = {signature_for_kind(kind, OFFICIAL, PARAMS) for kind in KIND_MODELS}
    assert len(sigs) == 3
    tiny = signature_for_kind("eagle", OFFICIAL, PARAMS, preset="tiny")
    assert tiny.startswith("tiny:eagle-v1:") and tiny not in sigs
    assert signature_preset(tiny) == "tiny"
    assert signature_preset(signature_for_kind("eagle", OFFICIAL, PARAMS)) == "default"


def test_missing_inputs_are_errors():
    with pytest.raises(ModelError, match="virchow2"):
        signature_for_kind("eagle", {"ctranspath": "7c998680", "chief": "6a46d200"}, PARAMS)
    with pytest.raises(ModelError, match="top_k"):
        signature_for_kind("eagle", OFFICIAL, {k: v for k, v in PARAMS.items() if k != "top_k"})
    with pytest.raises(ModelError, match="unknown vector kind"):
        signature_for_kind("uni", OFFICIAL, PARAMS)
    with pytest.raises(ModelError, match="integer"):
        signature_for_kind("eagle", OFFICIAL, {**PARAMS, "tile_px": 224.5})


def test_provenance_records_models_and_params():
    prov = provenance_for_kind("eagle", OFFICIAL, PARAMS)
    assert prov["signature"] == signature_for_kind("eagle", OFFICIAL, PARAMS)
    assert prov["dim"] == 1280 and set(prov["models"]) == {"ctranspath", "chief", "virchow2"}
    assert prov["models"]["ctranspath"]["digest_matches"] is True
    assert prov["models"]["virchow2"]["digest_matches"] is None  # not pinned
    assert prov["params"]["top_k"] == 25 and prov["params"]["min_edge_ratio"] == 0.02
    assert provenance_for_kind("mean-ctranspath", OFFICIAL, PARAMS)["dim"] == 768


def test_pipeline_params_come_from_settings():
    assert pipeline_params(Settings(), "eagle") == {**PARAMS, "min_edge_ratio": 0.02, "features": "float16"}
    assert "top_k" not in pipeline_params(Settings(), "chief")


def test_loaded_models_sign_with_their_digests_and_settings():
    models = load_models(Settings(models="tiny", device="cpu"))
    params = pipeline_params(Settings(), "eagle")
    for kind in KIND_MODELS:
        expected = signature_for_kind(kind, models.digests, params, preset="tiny")
        assert models.signature(kind) == expected
        assert models.provenance(kind)["signature"] == expected
    assert models.provenance("eagle")["models"]["virchow2"]["origin"] == "generated"
