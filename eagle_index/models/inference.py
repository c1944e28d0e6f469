"""Batched inference: uint8 tiles in, float32 numpy vectors out.

The spec's transform is applied in torch on the whole batch (resize of the shorter side,
centre crop, scale to [0, 1], normalise), under `torch.inference_mode()`. Autocast is used
only on CUDA and only where the reference used it (Virchow2: fp16); CPU runs fp32, as the
references do, so CPU vectors are comparable with theirs.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from eagle_index.errors import InputError, ModelError
from eagle_index.models.registry import InputTransform, ModelSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_BATCH = {"cpu": 16, "cuda": 64}


def preprocess(images: "torch.Tensor", transform: InputTransform) -> "torch.Tensor":
    """uint8 [B, H, W, 3] (any device) -> normalised float32 [B, 3, crop, crop] on the same device."""
    import torch
    import torch.nn.functional as F

    x = images.permute(0, 3, 1, 2).float()  # [B, 3, H, W], 0..255
    h, w = x.shape[-2:]
    if min(h, w) != transform.resize_px:
        # torchvision's rule: shorter side -> resize_px, longer side scaled and truncated.
        if h <= w:
            size = (transform.resize_px, int(transform.resize_px * w / h))
        else:
            size = (int(transform.resize_px * h / w), transform.resize_px)
        x = F.interpolate(x, size=size, mode=transform.interpolation, align_corners=False, antialias=transform.antialias)
        x = x.round().clamp_(0, 255)  # as a uint8 (PIL) resize would leave it
        h, w = size
    c = transform.crop_px
    if (h, w) != (c, c):
        top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
        x = x[..., top : top + c, left : left + c]
    mean = torch.tensor(transform.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, device=x.device).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).contiguous()  # same order of operations as ToTensor + Normalize


def _as_uint8_batch(images) -> "torch.Tensor":
    import torch

    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise InputError(f"tiles must be uint8 RGB, got dtype {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    elif not isinstance(images, torch.Tensor):
        raise InputError(f"tiles must be a numpy array [B, H, W, 3], got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise InputError(f"tiles must be uint8 RGB, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"tiles must have shape [B, H, W, 3], got {list(images.shape)}")
    return images


def autocast_context(spec: ModelSpec, device: "torch.device", precision: str = "fp32"):
    """fp16/bf16 autocast on CUDA where the spec asks for it; fp32 everywhere else, unless the
    opt-in `precision="bf16"` (signed apart) asks for bf16 autocast on any device."""
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda" and spec.cuda_autocast:
        return torch.autocast("cuda", dtype=getattr(torch, spec.cuda_autocast))
    return nullcontext()


def cuda_batch_size(free_bytes: int, per_tile_bytes: int = 24 << 20, cap: int = 512) -> int:
    """A CTransPath batch that fits the free GPU memory with room to spare (a multiple of 32)."""
    return max(32, min(cap, (free_bytes // 2 // per_tile_bytes) // 32 * 32))


class TileEncoder:
    """A loaded tile encoder: `.encode(uint8 [B, H, W, 3]) -> float32 [B, dim]`."""

    def __init__(
        self,
        spec: ModelSpec,
        module: "nn.Module",
        *,
        digest: str,
        path: Path | None = None,
        origin: str = "",
        forward: Callable[["nn.Module", "torch.Tensor"], "torch.Tensor"] | None = None,
    ) -> None:
        if spec.transform is None:
            raise ModelError(f"{spec.name} is not a tile encoder")
        self.spec = spec
        self.module = module
        self.digest = digest
        self.path = path
        self.origin = origin
        self._forward = forward or (lambda m, x: m(x))

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def device(self) -> "torch.device":
        return next(self.module.parameters()).device

    def encode(self, images, batch_size: int | None = None) -> np.ndarray:
        return encode_tiles(self, images, batch_size=batch_size)

    def __repr__(self) -> str:
        return f"TileEncoder({self.spec.key}, digest={self.digest[:12]}, device={self.device})"


class ClassTokenEncoder(TileEncoder):
    """Virchow2: the encoded vector is the class token."""

    def class_tokens(self, images, batch_size: int | None = None) -> np.ndarray:
        """uint8 [B, H, W, 3] -> class tokens float32 [B, dim]."""
        return self.encode(images, batch_size=batch_size)


def encode_tiles(encoder: TileEncoder, images, batch_size: int | None = None, precision: str = "fp32") -> np.ndarray:
    """Run a tile encoder over uint8 tiles [B, H, W, 3] in batches; float32 [B, dim] on the host."""
    import torch

    batch = _as_uint8_batch(images)
    device = encoder.device
    if batch.shape[0] == 0:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    step = batch_size or DEFAULT_BATCH.get(device.type, 16)
    if device.type == "cuda":
        batch = batch.pin_memory()  # page-locked, so the non_blocking copies below really are asynchronous
    out = []
    with torch.inference_mode():
        for start in range(0, batch.shape[0], step):
            chunk = batch[start : start + step].to(device, non_blocking=True)
            pixels = preprocess(chunk, encoder.spec.transform)
            with autocast_context(encoder.spec, device, precision):
                feats = encoder._forward(encoder.module, pixels)
            out.append(feats.float().cpu())
    return torch.cat(out).numpy()


class FeatureStream:
    """Encode tile batches as they arrive; one host copy of the features per slide.

    On CUDA the uint8 batches go through a ring of pinned buffers with asynchronous copies (a
    buffer is reused only after its copy's event), outputs stay on the device, and `result()`
    brings them back once: no per-batch `.cpu()` sync. Elsewhere each batch is encoded as
    `encode_tiles` always did. Use one per slide; `pinned` (a list) keeps buffers across slides.
    """

    RING = 3

    def __init__(self, encoder: TileEncoder, precision: str = "fp32", pinned: list | None = None):
        self.encoder = encoder
        self.precision = precision
        self.device = encoder.device
        self._out: list = []
        self._pinned = pinned if pinned is not None else []  # [(pinned uint8 tensor, copy event)]
        self._next = 0

    def add(self, images: np.ndarray) -> None:
        import torch

        if self.device.type != "cuda":  # as `encode_tiles` always did on the CPU
            if self.precision == "fp32":
                self._out.append(torch.from_numpy(self.encoder.encode(images)))
            else:
                self._out.append(torch.from_numpy(encode_tiles(self.encoder, images, precision=self.precision)))
            return
        images = _as_uint8_batch(images)
        slot = self._next % self.RING
        self._next += 1
        while len(self._pinned) <= slot:
            self._pinned.append((None, None))
        buf, event = self._pinned[slot]
        if event is not None:
            event.synchronize()  # the upload out of this buffer (RING batches ago) is done
        if buf is None or buf.shape[0] < images.shape[0] or buf.shape[1:] != images.shape[1:]:
            buf = torch.empty(tuple(images.shape), dtype=torch.uint8).pin_memory()
        host = buf[: images.shape[0]]
        host.copy_(images)
        with torch.inference_mode():
            chunk = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self._pinned[slot] = (buf, done)
            pixels = preprocess(chunk, self.encoder.spec.transform)
            with autocast_context(self.encoder.spec, self.device, self.precision):
                self._out.append(self.encoder._forward(self.encoder.module, pixels).float())

    def result(self) -> np.ndarray:
        import torch

        if not self._out:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return torch.cat(self._out).cpu().numpy()  # the one device -> host copy (and sync) of the slide


class SlideEncoder:
    """CHIEF: raw attention per tile and the attention-weighted slide embedding, numpy in/out."""

    def __init__(self, spec: ModelSpec, module: "nn.Module", *, digest: str, path: Path | None = None, origin: str = "") -> None:
        self.spec = spec
        self.module = module
        self.digest = digest
        self.path = path
        self.origin = origin

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def device(self) -> "torch.device":
        return next(self.module.parameters()).device

    def _features(self, feats) -> "torch.Tensor":
        import torch

        arr = np.asarray(feats)
        if arr.ndim != 2 or arr.shape[1] != self.spec.input_dim:
            raise InputError(f"{self.spec.name} expects features [N, {self.spec.input_dim}], got {list(arr.shape)}")
        # float16 features on disk are widened to fp32, as the reference does.
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(self.device)

    def raw_attention(self, feats) -> np.ndarray:
        """Pre-softmax attention score per tile, float32 [N]."""
        import torch

        x = self._features(feats)
        if x.shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        with torch.inference_mode():
            return self.module.raw_attention(x).float().cpu().numpy()

    def slide_embedding(self, feats) -> np.ndarray:
        """softmax(scores) · features, float32 [dim]."""
        import torch

        x = self._features(feats)
        if x.shape[0] == 0:
            raise InputError(f"{self.spec.name} slide embedding needs at least one tile")
        with torch.inference_mode():
            return self.module.slide_embedding(x).float().cpu().numpy()

    def __repr__(self) -> str:
        return f"SlideEncoder({self.spec.key}, digest={self.digest[:12]}, device={self.device})"
