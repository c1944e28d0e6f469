"""Virchow2: timm's ViT-H/14 with 4 register tokens and a packed SwiGLU MLP.

Built exactly like the reference (`timm.create_model("hf-hub:paige-ai/Virchow2", ...)`), but
from the local kwargs so no network is needed; the hub's `config.json`, when present beside
the weights, is checked against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eagle_index.errors import ModelError

# Fixed by the model card; not part of the tiny/default difference.
FIXED_KWARGS: dict[str, Any] = {"num_classes": 0, "global_pool": "", "dynamic_img_size": True}
# config.json model_args that must agree with our spec for the weights to mean the same thing.
CHECKED_ARGS = ("img_size", "init_values", "reg_tokens", "mlp_ratio", "global_pool", "num_classes")


def timm_kwargs(arch: dict) -> dict[str, Any]:
    """Keyword arguments for `timm.create_model` (besides the model name)."""
    import timm

    return {
        "pretrained": False,
        "img_size": arch["img_size"],
        "patch_size": arch["patch_size"],
        "embed_dim": arch["embed_dim"],
        "depth": arch["depth"],
        "num_heads": arch["num_heads"],
        "init_values": arch["init_values"],
        "reg_tokens": arch["reg_tokens"],
        "mlp_ratio": arch["mlp_ratio"],
        "mlp_layer": timm.layers.SwiGLUPacked,
        "act_layer": nn.SiLU,
        **FIXED_KWARGS,
    }


def build(arch: dict) -> nn.Module:
    import timm

    return timm.create_model(arch["timm_name"], **timm_kwargs(arch))


def class_tokens(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Token 0 of the final normalised sequence, [B, 3, H, W] -> [B, embed_dim].

    With `global_pool=""` and no head, the model returns all tokens (class, 4 registers,
    patches); EAGLE uses only the class token.
    """
    return model(pixels)[:, 0]


def check_config(config_path: Path, arch: dict) -> None:
    """Refuse a hub `config.json` that describes another architecture than the spec."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {config_path}: {exc}") from exc
    problems = []
    name = config.get("architecture")
    if name is not None and name != arch["timm_name"]:
        problems.append(f"architecture {name!r} (expected {arch['timm_name']!r})")
    args = config.get("model_args", {}) or {}
    expected = {**arch, **FIXED_KWARGS}
    for key in CHECKED_ARGS:
        if key in args and args[key] != expected[key]:
            problems.append(f"{key}={args[key]!r} (expected {expected[key]!r})")
    if args.get("no_embed_class"):
        problems.append("no_embed_class=True (Virchow2's position embedding covers the prefix tokens)")
    if problems:
        raise ModelError(f"{config_path} does not describe Virchow2 as eagle-index builds it: " + "; ".join(problems))
