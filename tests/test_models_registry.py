"""The registry is cheap, complete and the single source of model facts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from eagle_index.errors import ModelError
from eagle_index.models import MODEL_IDS, REGISTRY, specs_for
from eagle_index.models.registry import CHIEF_DIGEST, CTRANSPATH_DIGEST, expand_digest


def test_import_does_not_load_torch():
    code = "import sys, eagle_index.models, eagle_index.models.weights; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_has_the_three_models_with_their_dims_and_digests():
    assert tuple(REGISTRY) == MODEL_IDS
    assert REGISTRY["ctranspath"].dim == 768
    assert REGISTRY["chief"].dim == 768 and REGISTRY["chief"].input_dim == 768
    assert REGISTRY["virchow2"].dim == 1280
    assert REGISTRY["ctranspath"].digest == CTRANSPATH_DIGEST
    assert REGISTRY["chief"].digest == CHIEF_DIGEST
    assert REGISTRY["virchow2"].gated and REGISTRY["virchow2"].hub_repo == "paige-ai/Virchow2"
    assert "CC-BY-NC-ND-4.0" in REGISTRY["virchow2"].licence


def test_transforms_travel_with_the_specs():
    ctp, v2 = REGISTRY["ctranspath"].transform, REGISTRY["virchow2"].transform
    assert (ctp.tile_px, ctp.resize_px, ctp.crop_px, ctp.interpolation) == (224, 224, 224, "bilinear")
    assert (v2.tile_px, v2.resize_px, v2.crop_px, v2.interpolation) == (224, 224, 224, "bicubic")
    assert ctp.mean == (0.485, 0.456, 0.406) and ctp.std == (0.229, 0.224, 0.225)
    assert REGISTRY["chief"].transform is None


def test_specs_are_frozen():
    spec = REGISTRY["ctranspath"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.dim = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.arch["embed_dim"] = 1  # type: ignore[index]


def test_tiny_preset_is_small_and_distinct():
    tiny = specs_for("tiny")
    assert tuple(tiny) == MODEL_IDS
    assert all(s.preset == "tiny" and s.digest is None and s.seed is not None for s in tiny.values())
    assert tiny["chief"].input_dim == tiny["ctranspath"].dim
    assert tiny["virchow2"].dim < 1280 and tiny["ctranspath"].dim < 768
    assert tiny["virchow2"].arch["reg_tokens"] == 4 and tiny["virchow2"].arch["patch_size"] == 14
    assert {s.key for s in tiny.values()} == {"tiny:ctranspath", "tiny:chief", "tiny:virchow2"}


def test_unknown_preset_is_a_model_error():
    with pytest.raises(ModelError, match="unknown model preset"):
        specs_for("huge")


def test_registry_names_are_the_ground_floor_names():
    """`config` checks settings against `eagle_index.model_names`; the registry builds its specs under the same names."""
    from eagle_index import model_names
    from eagle_index.models.registry import PRESET_SPECS, PRESETS

    assert tuple(PRESET_SPECS) == PRESETS == model_names.PRESETS
    assert tuple(REGISTRY) == MODEL_IDS == model_names.MODEL_IDS


def test_expand_digest_only_expands_official_prefixes():
    assert expand_digest("ctranspath", "7c998680") == CTRANSPATH_DIGEST
    assert expand_digest("ctranspath", "7C998680060C") == CTRANSPATH_DIGEST
    assert expand_digest("ctranspath", "7c99868") == "7c99868"  # too short to trust
    assert expand_digest("ctranspath", "1646f230") == "1646f230"  # CHIEF's CTransPath: other weights
    assert expand_digest("virchow2", "abcdef01") == "abcdef01"
