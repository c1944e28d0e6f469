"""Seeded random weights for the `tiny` preset (its specs live in `registry.py` with the others).

The preset exists so tests and the demo run the real code paths (loaders, transforms,
inference) fast on a CPU with no weight files. Vectors it produces carry signatures starting
with `tiny:` and can never be mistaken for real ones.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn

# Tensors whose values are structural rather than learned: keep what the module computed.
_STRUCTURAL = ("relative_position_index", "attn_mask", "num_batches_tracked", "running_mean", "running_var")


def seeded_init_(module: "nn.Module", seed: int) -> "nn.Module":
    """Overwrite every learned tensor from a private generator, in name order.

    Scales are chosen so that activations stay O(1) through the network and every block
    matters (LayerScale gammas are set to 1 instead of 1e-5, otherwise tiny ViT outputs
    would hardly depend on the image).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if any(part in name for part in _STRUCTURAL) or not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
            if leaf == "gamma":
                value = torch.ones_like(noise)
            elif leaf in ("cls_token", "reg_token", "pos_embed") or name.endswith("relative_position_bias_table"):
                value = 0.02 * noise
            elif tensor.ndim >= 2:
                value = noise / math.sqrt(tensor[0].numel())
            elif leaf == "weight":  # norm scales
                value = 1.0 + 0.1 * noise
            else:  # biases
                value = 0.02 * noise
            tensor.copy_(value.to(tensor.dtype))
    return module


def state_dict_digest(state: Mapping[str, "torch.Tensor"]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: the identity of generated weights."""
    sha = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        sha.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        sha.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    return sha.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8
