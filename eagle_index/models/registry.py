"""The one list of models: small frozen specs, no torch.

A spec says everything a caller needs without loading anything: output dimension, how tiles
must be preprocessed, which file holds the weights and its expected SHA-256, where it comes
from and under which licence. Architectures and weights appear only in `loading.py`, so the CLI
can list and document models without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, Mapping

from eagle_index.model_names import MODEL_IDS, PRESETS  # the names, defined on the ground floor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputTransform:
    """How uint8 RGB tiles become the model's input tensor (travels with the model)."""

    tile_px: int = 224
    resize_px: int = 224  # shorter side is resized to this
    crop_px: int = 224  # then centre-cropped to a square of this side
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    antialias: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def as_dict(self) -> dict[str, Any]:
        return {
            "tile_px": self.tile_px,
            "resize_px": self.resize_px,
            "crop_px": self.crop_px,
            "interpolation": self.interpolation,
            "antialias": self.antialias,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class ModelSpec:
    """One model as the rest of eagle-index sees it; loading happens elsewhere."""

    id: str
    name: str
    role: Literal["tile", "slide"]
    preset: str
    dim: int
    weights_file: str  # path relative to a weights folder, e.g. "virchow2/pytorch_model.bin"
    source: str  # human-readable origin of the weights
    licence: str
    arch: Mapping[str, Any] = field(default_factory=dict)
    input_dim: int | None = None  # slide encoders: dimension of the tile features they take
    transform: InputTransform | None = None
    digest: str | None = None  # expected SHA-256 of the weights file; None = not pinned
    alt_weights_files: tuple[str, ...] = ()  # accepted alternatives (e.g. model.safetensors)
    config_file: str | None = None  # hub config shipped beside the weights (checked if present)
    source_url: str | None = None
    hub_repo: str | None = None  # default Hugging Face repo, if the weights live on the hub
    gated: bool = False
    container_key: str | None = None  # the state dict sits under this key of the checkpoint
    extra_keys: tuple[str, ...] = ()  # entries of the official file that are not model weights
    cuda_autocast: Literal["float16", "bfloat16"] | None = None  # reference precision on CUDA
    seed: int | None = None  # tiny preset: seed of the generated weights

    def __post_init__(self) -> None:
        # Freeze the arch mapping so a spec can be shared and hashed safely.
        object.__setattr__(self, "arch", MappingProxyType(dict(self.arch)))

    @property
    def key(self) -> str:
        """Unique name across presets, e.g. 'ctranspath' or 'tiny:ctranspath'."""
        return self.id if self.preset == "default" else f"{self.preset}:{self.id}"

    @property
    def candidate_files(self) -> tuple[str, ...]:
        return (self.weights_file, *self.alt_weights_files)

    @property
    def generated(self) -> bool:
        """True for specs whose weights may be generated in process (tiny preset)."""
        return self.seed is not None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary for `models info` and provenance records."""
        return {
            "id": self.id,
            "key": self.key,
            "name": self.name,
            "role": self.role,
            "preset": self.preset,
            "dim": self.dim,
            "input_dim": self.input_dim,
            "weights_file": self.weights_file,
            "alt_weights_files": list(self.alt_weights_files),
            "expected_digest": self.digest,
            "source": self.source,
            "source_url": self.source_url,
            "hub_repo": self.hub_repo,
            "gated": self.gated,
            "licence": self.licence,
            "transform": self.transform.as_dict() if self.transform else None,
            "arch": dict(self.arch),
        }


CTRANSPATH_DIGEST = "7c998680060c8743551a412583fac689db43cec07053b72dfec6dcd810113539"
CHIEF_DIGEST = "6a46d200b32a65e5ce4774611b889b5f1bbf7a39f9111321a2a1b5dbdb9996b8"

CTRANSPATH = ModelSpec(
    id="ctranspath",
    name="CTransPath",
    role="tile",
    preset="default",
    dim=768,
    weights_file="ctranspath.pth",
    digest=CTRANSPATH_DIGEST,
    source="CTransPath authors' release (Google Drive), as used by STAMP",
    source_url="https://drive.google.com/file/d/1DoDx_70_TLj98gTf6YTXnu4tFhsFocDX",
    licence="GPL-3.0 (TransPath repository); weights released for research use",
    container_key="model",
    transform=InputTransform(interpolation="bilinear"),
    arch={
        "img_size": 224,
        "window_size": 7,
        "embed_dim": 96,
        "depths": (2, 2, 6, 2),
        "num_heads": (3, 6, 12, 24),
        "mlp_ratio": 4.0,
    },
    cuda_autocast=None,  # STAMP extracts CTransPath features in fp32
)

CHIEF = ModelSpec(
    id="chief",
    name="CHIEF slide encoder (small, gated attention)",
    role="slide",
    preset="default",
    dim=768,
    input_dim=768,
    weights_file="CHIEF_pretraining.pth",
    digest=CHIEF_DIGEST,
    source="CHIEF authors' release (Google Drive, hms-dbmi/CHIEF model_weight)",
    source_url="https://drive.google.com/file/d/10bJq_ayX97_1w95omN8_mESrYAGIBAPb",
    licence="AGPL-3.0 (CHIEF repository); weights released for research use",
    extra_keys=("organ_embedding",),
    arch={"size": (768, 512, 256), "n_classes": 2},
)

VIRCHOW2 = ModelSpec(
    id="virchow2",
    name="Virchow2",
    role="tile",
    preset="default",
    dim=1280,
    weights_file="virchow2/pytorch_model.bin",
    alt_weights_files=("virchow2/model.safetensors",),
    config_file="virchow2/config.json",
    digest=None,  # the hub publishes no digest we could pin offline; the actual one is recorded
    source="Hugging Face hub paige-ai/Virchow2 (gated: accept the terms, then use an HF token)",
    source_url="https://huggingface.co/paige-ai/Virchow2",
    hub_repo="paige-ai/Virchow2",
    gated=True,
    licence="CC-BY-NC-ND-4.0 (non-commercial research use only; no derivatives)",
    transform=InputTransform(interpolation="bicubic"),
    arch={
        "timm_name": "vit_huge_patch14_224",
        "img_size": 224,
        "patch_size": 14,
        "embed_dim": 1280,
        "depth": 32,
        "num_heads": 16,
        "init_values": 1e-5,
        "reg_tokens": 4,
        "mlp_ratio": 5.3375,
    },
    cuda_autocast="float16",  # the EAGLE reference runs Virchow2 under fp16 autocast on CUDA
)

REGISTRY: Mapping[str, ModelSpec] = MappingProxyType(
    {spec.id: spec for spec in (CTRANSPATH, CHIEF, VIRCHOW2)}
)
"""Specs of the official models, by id."""


# -- the tiny preset: the same architectures, small dimensions, seeded random weights --------------
_TINY_SOURCE = "generated in process from a fixed seed (random weights: tests and demos only)"
_TINY_LICENCE = "n/a (random weights)"

TINY_CTRANSPATH = replace(
    CTRANSPATH,
    preset="tiny",
    dim=192,
    digest=None,
    source=_TINY_SOURCE,
    source_url=None,
    licence=_TINY_LICENCE,
    arch={**CTRANSPATH.arch, "embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)},
    seed=1001,
)

TINY_CHIEF = replace(
    CHIEF,
    preset="tiny",
    dim=192,
    input_dim=192,
    digest=None,
    source=_TINY_SOURCE,
    source_url=None,
    licence=_TINY_LICENCE,
    arch={"size": (192, 32, 16), "n_classes": 2, "text_dim": 32},
    seed=1002,
)

TINY_VIRCHOW2 = replace(
    VIRCHOW2,
    preset="tiny",
    dim=96,
    digest=None,
    source=_TINY_SOURCE,
    source_url=None,
    hub_repo=None,
    gated=False,
    licence=_TINY_LICENCE,
    # 96 * 5.3375 = 512 hidden units: even, as the packed SwiGLU needs.
    arch={**VIRCHOW2.arch, "embed_dim": 96, "depth": 2, "num_heads": 3},
    seed=1003,
)

TINY_REGISTRY: Mapping[str, ModelSpec] = MappingProxyType(
    {spec.id: spec for spec in (TINY_CTRANSPATH, TINY_CHIEF, TINY_VIRCHOW2)}
)

PRESET_SPECS: Mapping[str, Mapping[str, ModelSpec]] = MappingProxyType({"default": REGISTRY, "tiny": TINY_REGISTRY})
"""Every preset, by name (the keys are `PRESETS`, which CLI choices and `Settings.models` are checked against)."""


def specs_for(preset: str) -> Mapping[str, ModelSpec]:
    """The specs of one preset ('default' or 'tiny'), by id."""
    if preset in PRESET_SPECS:
        return PRESET_SPECS[preset]
    from eagle_index.errors import ModelError

    raise ModelError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")


def expand_digest(model_id: str, digest: str) -> str:
    """Full known digest for an abbreviated one (STAMP names CTransPath by 8 hex digits).

    A prefix of at least 8 hex digits that matches the pinned digest of the official model
    is expanded; anything else is returned lower-cased as given.
    """
    digest = digest.strip().lower()
    spec = REGISTRY.get(model_id)
    if spec and spec.digest and 8 <= len(digest) < 64 and spec.digest.startswith(digest):
        return spec.digest
    return digest
