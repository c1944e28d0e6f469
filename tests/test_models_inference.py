"""Batched inference helpers: transforms from the spec, numpy in/out, fp32 on CPU."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from eagle_index.config import Settings
from eagle_index.errors import InputError
from eagle_index.models import load_models, specs_for
from eagle_index.models.inference import encode_tiles, preprocess
from eagle_index.models.registry import InputTransform


@pytest.fixture(scope="module")
def tiny():
    return load_models(Settings(models="tiny", device="cpu"))


def _tiles(n, h=224, w=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_preprocess_of_224_tiles_is_only_scaling_and_normalising():
    tiles = torch.from_numpy(_tiles(2))
    t = InputTransform()
    out = preprocess(tiles, t)
    mean, std = torch.tensor(t.mean).view(1, 3, 1, 1), torch.tensor(t.std).view(1, 3, 1, 1)
    expected = (tiles.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_preprocess_resizes_shorter_side_then_centre_crops():
    t = InputTransform(interpolation="bicubic")
    assert preprocess(torch.from_numpy(_tiles(1, 448, 448)), t).shape == (1, 3, 224, 224)
    # A uniform image stays uniform through resize + crop (no edge effects, correct rounding).
    flat = torch.full((1, 300, 250, 3), 128, dtype=torch.uint8)
    out = preprocess(flat, t)
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out[0, :, 0, 0], (128 / 255 - torch.tensor(t.mean)) / torch.tensor(t.std))
    # Non-square without resize: only the centre crop.
    wide = torch.from_numpy(_tiles(1, 224, 230))
    torch.testing.assert_close(preprocess(wide, t), preprocess(wide[:, :, 3:227], t))


def test_encoders_return_float32_vectors_of_the_spec_dim(tiny):
    tiles = _tiles(5)
    for enc in (tiny.ctranspath, tiny.virchow2):
        out = enc.encode(tiles)
        assert out.shape == (5, enc.spec.dim) and out.dtype == np.float32
        assert np.isfinite(out).all()
    assert tiny.virchow2.class_tokens(tiles).shape == (5, specs_for("tiny")["virchow2"].dim)


def test_batching_does_not_change_results(tiny):
    tiles = _tiles(7, seed=3)
    whole = encode_tiles(tiny.ctranspath, tiles, batch_size=7)
    pieces = encode_tiles(tiny.ctranspath, tiles, batch_size=3)
    np.testing.assert_allclose(whole, pieces, rtol=1e-5, atol=1e-5)


def test_different_tiles_give_different_vectors(tiny):
    out = tiny.virchow2.encode(_tiles(2, seed=4))
    assert not np.allclose(out[0], out[1])


def test_bad_inputs_are_input_errors(tiny):
    with pytest.raises(InputError, match="uint8"):
        tiny.ctranspath.encode(_tiles(1).astype(np.float32))
    with pytest.raises(InputError, match=r"\[B, H, W, 3\]"):
        tiny.ctranspath.encode(_tiles(1)[0])
    with pytest.raises(InputError):
        tiny.chief.raw_attention(np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(InputError):
        tiny.chief.slide_embedding(np.zeros((0, tiny.chief.spec.input_dim), dtype=np.float32))
    assert tiny.ctranspath.encode(_tiles(0)).shape == (0, tiny.ctranspath.spec.dim)
    assert tiny.chief.raw_attention(np.zeros((0, tiny.chief.spec.input_dim), dtype=np.float32)).shape == (0,)


def test_chief_wrapper_accepts_float16_features_and_matches_softmax(tiny):
    feats = tiny.ctranspath.encode(_tiles(6, seed=5))
    scores = tiny.chief.raw_attention(feats.astype(np.float16))
    assert scores.dtype == np.float32 and scores.shape == (6,)
    w = np.exp(scores - scores.max())
    expected = (w / w.sum()) @ feats.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(tiny.chief.slide_embedding(feats.astype(np.float16)), expected, rtol=1e-4, atol=1e-5)
