"""Our modules have exactly the official state-dict names and shapes, and compute the right thing."""

from __future__ import annotations

import pytest
import torch

from eagle_index.models import REGISTRY, specs_for
from eagle_index.models.chief import CHIEF
from eagle_index.models.ctranspath import ConvStem, CTransPath
from eagle_index.models.loading import build_module
from eagle_index.models.tiny import seeded_init_
from eagle_index.models.virchow2 import class_tokens
from model_fixtures import MANIFEST_DIR, load_manifest, manifest_shapes

needs_manifests = pytest.mark.skipif(not MANIFEST_DIR.is_dir(), reason="../shared/manifests not available")


def _shapes(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}


@needs_manifests
@pytest.mark.parametrize("model_id", ["ctranspath", "chief", "virchow2"])
def test_state_dict_matches_manifest_exactly(model_id):
    """Keys, order, shapes and dtypes equal the official file (built on meta: nothing allocated)."""
    module = build_module(REGISTRY[model_id], device="meta")
    ours, official = _shapes(module), manifest_shapes(model_id)
    manifest = load_manifest(model_id)  # CHIEF's organ_embedding is listed apart, not in state_dict
    assert list(ours) == list(official)
    assert ours == official
    assert len(ours) == manifest["num_state_dict_keys"]
    assert sum(p.numel() for p in module.parameters()) == manifest["total_params"]


@needs_manifests
def test_chief_attention_path_parameter_count():
    module = build_module(REGISTRY["chief"], device="meta")
    assert sum(p.numel() for p in module.attention_net.parameters()) == load_manifest("chief")["params_used_in_attention_path"]


def test_ctranspath_buffers_are_registered_like_the_original():
    module = build_module(REGISTRY["ctranspath"], device="meta")
    buffers = dict(module.named_buffers())
    assert sum(k.endswith("relative_position_index") for k in buffers) == 12
    masks = {k: tuple(v.shape) for k, v in buffers.items() if k.endswith("attn_mask")}
    assert masks == {
        "layers.0.blocks.1.attn_mask": (64, 49, 49),
        "layers.1.blocks.1.attn_mask": (16, 49, 49),
        "layers.2.blocks.1.attn_mask": (4, 49, 49),
        "layers.2.blocks.3.attn_mask": (4, 49, 49),
        "layers.2.blocks.5.attn_mask": (4, 49, 49),
    }


class _TimmStem(ConvStem):
    """Our conv stem behind timm's patch-embedding interface (NHWC output)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, **_):
        super().__init__(img_size, embed_dim)
        self.grid_size = (img_size // 4, img_size // 4)

    def forward(self, x):
        tokens = super().forward(x)
        return tokens.view(x.shape[0], *self.grid_size, -1)


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_ctranspath_matches_timm_swin_with_the_same_weights(preset):
    """An independent Swin (timm's, converted from the original layout) gives the same features."""
    from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

    arch = dict(specs_for(preset)["ctranspath"].arch)
    ours = seeded_init_(CTransPath(**arch), seed=7).eval()
    theirs = SwinTransformer(
        img_size=224,
        patch_size=4,
        embed_dim=arch["embed_dim"],
        depths=arch["depths"],
        num_heads=arch["num_heads"],
        window_size=arch["window_size"],
        mlp_ratio=arch["mlp_ratio"],
        num_classes=0,
        embed_layer=_TimmStem,
    ).eval()
    theirs.load_state_dict(checkpoint_filter_fn(ours.state_dict(), theirs), strict=True)
    x = torch.randn(2 if preset == "tiny" else 1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = ours(x), theirs(x)
    assert a.shape == (x.shape[0], specs_for(preset)["ctranspath"].dim)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_ctranspath_refuses_other_input_sizes():
    module = build_module(specs_for("tiny")["ctranspath"])
    with pytest.raises(ValueError, match="224x224"):
        module(torch.zeros(1, 3, 256, 256))


def test_chief_raw_attention_is_the_gated_formula():
    chief = seeded_init_(CHIEF(size=(32, 16, 8), text_dim=8), seed=3).eval()
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(1))
    sd = chief.state_dict()
    h1 = torch.relu(x @ sd["attention_net.0.weight"].T + sd["attention_net.0.bias"])
    a = torch.tanh(h1 @ sd["attention_net.3.attention_a.0.weight"].T + sd["attention_net.3.attention_a.0.bias"])
    g = torch.sigmoid(h1 @ sd["attention_net.3.attention_b.0.weight"].T + sd["attention_net.3.attention_b.0.bias"])
    expected = (a * g) @ sd["attention_net.3.attention_c.weight"][0] + sd["attention_net.3.attention_c.bias"]
    with torch.inference_mode():
        scores = chief.raw_attention(x)
        embedding = chief.slide_embedding(x)
        perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
        permuted = chief.raw_attention(x[perm])
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(permuted, scores[perm])  # a tile's score depends only on that tile
    torch.testing.assert_close(embedding, torch.softmax(expected, 0) @ x)
    assert scores.shape == (7,) and embedding.shape == (32,)


def test_chief_rejects_wrong_feature_shapes():
    chief = CHIEF(size=(32, 16, 8), text_dim=8).eval()
    with pytest.raises(ValueError):
        chief.raw_attention(torch.zeros(3, 31))
    with pytest.raises(ValueError):
        chief.slide_embedding(torch.zeros(0, 32))


def test_virchow2_tiny_token_layout_and_class_token():
    spec = specs_for("tiny")["virchow2"]
    model = seeded_init_(build_module(spec), seed=5).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tokens = model(x)
        cls = class_tokens(model, x)
    assert tokens.shape == (2, 1 + 4 + 16 * 16, spec.dim)  # class, 4 registers, 16x16 patches
    torch.testing.assert_close(cls, tokens[:, 0])
    assert model.pos_embed.shape == (1, 261, spec.dim)  # covers class + registers (no_embed_class unset)
