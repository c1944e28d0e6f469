"""Build a model from its spec and load its weights strictly — the only place weights are read.

Loading order: locate the file, check its digest (before unpickling anything), read the
checkpoint with `weights_only=True`, take the state dict out of the official container, then
`load_state_dict(strict=True)`. Any mismatch in names or shapes is a `ModelError` that lists
what differs. The tiny preset generates seeded weights when no file is given.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from eagle_index.errors import ModelError
from eagle_index.models.registry import ModelSpec
from eagle_index.models.weights import WeightsLocation, check_digest

if TYPE_CHECKING:
    import torch
    from torch import nn

_BUILDERS = {
    "ctranspath": "eagle_index.models.ctranspath",
    "chief": "eagle_index.models.chief",
    "virchow2": "eagle_index.models.virchow2",
}


def build_module(spec: ModelSpec, device: "torch.device | str | None" = None) -> "nn.Module":
    """The architecture for a spec, randomly initialised (use device='meta' to allocate nothing)."""
    import torch

    builder = importlib.import_module(_BUILDERS[spec.id]).build
    with torch.device(device or "cpu"):
        return builder(dict(spec.arch))


def read_checkpoint(path: Path) -> Mapping[str, Any]:
    """Read a `.pth`/`.bin` (tensors only, memory-mapped when possible) or `.safetensors` file."""
    import pickle

    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc


def official_state_dict(spec: ModelSpec, checkpoint: Mapping[str, Any], path: Path | str = "") -> dict[str, "torch.Tensor"]:
    """Take the model's state dict out of the official file layout.

    CTransPath nests it under "model"; CHIEF's file also carries `organ_embedding`, which is
    not part of the slide encoder and is dropped here.
    """
    import torch

    state: Any = checkpoint
    if spec.container_key is not None:
        if not isinstance(checkpoint, Mapping) or spec.container_key not in checkpoint:
            raise ModelError(f"{spec.name}: {path} has no {spec.container_key!r} entry (not the official layout)")
        state = checkpoint[spec.container_key]
    if not isinstance(state, Mapping):
        raise ModelError(f"{spec.name}: {path} does not hold a state dict")
    state = {k: v for k, v in state.items() if k not in spec.extra_keys}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{spec.name}: {path} has non-tensor entries: {', '.join(bad[:5])}")
    return state


def load_strict(module: "nn.Module", state: Mapping[str, "torch.Tensor"], spec: ModelSpec, path: Path | str = "") -> "nn.Module":
    """`load_state_dict(strict=True)` with a readable error; `assign` keeps meta-built modules cheap."""
    on_meta = any(t.is_meta for t in module.state_dict().values())
    try:
        module.load_state_dict(state, strict=True, assign=on_meta)
    except RuntimeError as exc:
        hint = ""
        if spec.preset != "default":
            hint = f"\n  (the {spec.preset} preset reads files from --weights-dir when present; unset it to use generated weights)"
        raise ModelError(
            f"{spec.name}: {path or 'weights'} do not fit the {spec.preset} architecture:\n{_diff(module, state)}{hint}"
        ) from exc
    module.float()  # fp16/bf16 checkpoints become fp32 like the reference; int buffers stay
    left = [n for n, t in module.state_dict().items() if t.is_meta]
    if left:
        raise ModelError(f"{spec.name}: tensors left uninitialised after loading: {', '.join(left[:5])}")
    return module


def _diff(module: "nn.Module", state: Mapping[str, "torch.Tensor"]) -> str:
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    lines = []
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [f"{k}: file {theirs[k]} vs model {ours[k]}" for k in ours if k in theirs and ours[k] != theirs[k]]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            lines.append(f"  {title} ({len(items)}): {', '.join(items[:5])}{more}")
    return "\n".join(lines) or "  (no name/shape difference; dtype?)"


@dataclass
class LoadedModule:
    """A loaded, frozen module with where it came from and its actual digest."""

    spec: ModelSpec
    module: "nn.Module"
    digest: str
    path: Path | None
    origin: str
    digest_pinned: bool
    digest_ok: bool


def load_module(
    location: WeightsLocation,
    *,
    device: str = "cpu",
    allow_digest_mismatch: bool = False,
    digest_cache: Path | None = None,
) -> LoadedModule:
    """Load one located model onto `device`, eval mode, gradients off (digests remembered under `digest_cache`)."""
    spec = location.spec
    if location.origin == "generated":
        from eagle_index.models.tiny import seeded_init_, state_dict_digest

        module = seeded_init_(build_module(spec), spec.seed or 0)
        digest = state_dict_digest(module.state_dict())
        pinned, ok = False, True
    elif location.path is None:
        raise ModelError(location.missing_message())
    else:
        path = location.path
        check = check_digest(spec, path, allow_mismatch=allow_digest_mismatch, cache_dir=digest_cache)  # before unpickling
        if spec.config_file is not None:
            config = path.parent / Path(spec.config_file).name
            if config.is_file():
                from eagle_index.models.virchow2 import check_config

                check_config(config, dict(spec.arch))
        state = official_state_dict(spec, read_checkpoint(path), path)
        # Real-size models are built on the meta device: no random init of 600 M parameters.
        module = load_strict(build_module(spec, "meta" if spec.preset == "default" else "cpu"), state, spec, path)
        digest, pinned, ok = check.actual, check.pinned, check.ok
    module.eval().requires_grad_(False)
    try:
        module.to(device)
    except (RuntimeError, AssertionError) as exc:  # e.g. 'cuda' on a machine without CUDA
        raise ModelError(f"cannot put {spec.name} on device {device!r}: {exc}") from exc
    return LoadedModule(spec, module, digest, location.path, location.origin, pinned, ok)
