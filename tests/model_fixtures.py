"""Random weights written in the official file layouts, for testing the real loaders.

`write_official_layout_weights(folder, preset="tiny")` writes small files that the `tiny`
preset loads from `--weights-dir`; `preset="manifest"` writes full-size random tensors with the
exact key/shape lists of `../shared/manifests/*.json` (Virchow2 would be 2.5 GB: ask for it
explicitly). Neither matches an official digest: load "manifest" files with
`allow_digest_mismatch=True`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from eagle_index.models.loading import build_module
from eagle_index.models.registry import MODEL_IDS, specs_for
from eagle_index.models.tiny import seeded_init_
from eagle_index.models.virchow2 import FIXED_KWARGS

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
MANIFEST_DIR = SHARED_DIR / "manifests"
ORGAN_EMBEDDING_ROWS = 19  # anatomic sites in CHIEF's text embedding table

__all__ = ["MANIFEST_DIR", "load_manifest", "manifest_shapes", "write_official_layout_weights"]


def load_manifest(model_id: str) -> dict:
    """The manifest JSON of one model (FileNotFoundError when ../shared is absent)."""
    return json.loads((MANIFEST_DIR / f"{model_id}.json").read_text())


def manifest_shapes(model_id: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) of the official state dict, in file order."""
    return {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in load_manifest(model_id)["state_dict"]}


def _random_state_from_manifest(model_id: str, seed: int) -> dict[str, torch.Tensor]:
    """Random values with manifest shapes; structural buffers (window indices, masks) computed."""
    gen = torch.Generator().manual_seed(seed)
    structural = {}
    if model_id == "ctranspath":
        spec = specs_for("default")["ctranspath"]
        structural = {
            k: v for k, v in build_module(spec).state_dict().items() if k.endswith(("relative_position_index", "attn_mask"))
        }
    state = {}
    for key, (shape, dtype) in manifest_shapes(model_id).items():
        if key in structural:
            value = structural[key]
            if tuple(value.shape) != shape:
                raise AssertionError(f"{key}: computed {tuple(value.shape)} vs manifest {shape}")
        elif dtype == "int64":
            value = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=gen) + 0.5
        else:
            value = torch.randn(shape, generator=gen) * 0.02
        state[key] = value.clone()
    return state


def _tiny_state(model_id: str, seed: int) -> dict[str, torch.Tensor]:
    spec = specs_for("tiny")[model_id]
    return {k: v.clone() for k, v in seeded_init_(build_module(spec), seed).state_dict().items()}


def _virchow2_config(preset: str) -> dict:
    """A hub-style config.json (architecture, model_args, pretrained_cfg) for the given preset."""
    arch = dict(specs_for("default" if preset == "manifest" else preset)["virchow2"].arch)
    model_args = {k: arch[k] for k in ("img_size", "init_values", "reg_tokens", "mlp_ratio")}
    model_args.update({k: FIXED_KWARGS[k] for k in ("num_classes", "global_pool", "dynamic_img_size")})
    if preset != "manifest":
        model_args.update({k: arch[k] for k in ("embed_dim", "depth", "num_heads")})
    return {
        "architecture": arch["timm_name"],
        "model_args": model_args,
        "pretrained_cfg": {
            "tag": "virchow_v2",
            "input_size": [3, 224, 224],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "license": "CC-BY-NC-ND-4.0",
        },
    }


def write_official_layout_weights(
    folder: Path | str,
    preset: str = "tiny",
    models: Iterable[str] = MODEL_IDS,
    seed: int = 0,
    virchow2_format: str = "bin",
) -> dict[str, Path]:
    """Write random weights as the official files into `folder`; return model id -> weights path.

    Layout: `ctranspath.pth` ({"model": state}), `CHIEF_pretraining.pth` (flat state plus
    `organ_embedding`), `virchow2/config.json` + `virchow2/pytorch_model.bin` (or
    `model.safetensors` with `virchow2_format="safetensors"`).
    """
    if preset not in ("tiny", "manifest"):
        raise ValueError(f"preset must be 'tiny' or 'manifest', got {preset!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for offset, model_id in enumerate(models):
        state = _random_state_from_manifest(model_id, seed + offset) if preset == "manifest" else _tiny_state(model_id, seed + offset)
        if model_id == "ctranspath":
            path = folder / "ctranspath.pth"
            torch.save({"model": state}, path)
        elif model_id == "chief":
            path = folder / "CHIEF_pretraining.pth"
            text_dim = state["text_to_vision.0.weight"].shape[1]
            torch.save({**state, "organ_embedding": torch.randn(ORGAN_EMBEDDING_ROWS, text_dim)}, path)
        elif model_id == "virchow2":
            sub = folder / "virchow2"
            sub.mkdir(exist_ok=True)
            (sub / "config.json").write_text(json.dumps(_virchow2_config(preset), indent=2))
            if virchow2_format == "safetensors":
                from safetensors.torch import save_file

                path = sub / "model.safetensors"
                save_file({k: v.contiguous() for k, v in state.items()}, str(path))
            else:
                path = sub / "pytorch_model.bin"
                torch.save(state, path)
        else:
            raise ValueError(f"unknown model id {model_id!r}")
        written[model_id] = path
    return written
