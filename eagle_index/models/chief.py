"""CHIEF slide encoder ("small" gated attention), of which EAGLE uses only the attention.

Module names follow the official `CHIEF_pretraining.pth` so it loads with `strict=True`; the
heads EAGLE never runs (`classifiers`, `instance_classifiers`, `att_head`, `text_to_vision`)
are declared only so the whole file is verified, not skipped.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

DROPOUT = 0.25  # present in the reference; inactive in eval mode, holds no state


class GatedAttention(nn.Module):
    """score = Wc · (tanh(Wa·h) ⊙ sigmoid(Wb·h)) — one pre-softmax logit per instance."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Dropout(DROPOUT))
        self.attention_b = nn.Sequential(nn.Linear(in_dim, hidden), nn.Sigmoid(), nn.Dropout(DROPOUT))
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(h) * self.attention_b(h))


class AttentionHead(nn.Module):
    """Unused by EAGLE; kept for strict loading of the official file."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)


class CHIEF(nn.Module):
    """Gated-attention MIL over tile features [N, size[0]]."""

    def __init__(self, size: Sequence[int] = (768, 512, 256), n_classes: int = 2, text_dim: int = 768) -> None:
        super().__init__()
        feat_dim, hidden, att_dim = size
        self.feat_dim = feat_dim
        self.attention_net = nn.Sequential(
            nn.Linear(feat_dim, hidden), nn.ReLU(), nn.Dropout(DROPOUT), GatedAttention(hidden, att_dim)
        )
        self.classifiers = nn.Linear(hidden, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))
        self.att_head = AttentionHead(hidden, att_dim)
        self.text_to_vision = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(), nn.Dropout(DROPOUT))

    def raw_attention(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-softmax attention score per tile, [N, D] -> [N]; depends only on that tile."""
        if features.ndim != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(f"CHIEF expects features [N, {self.feat_dim}], got {list(features.shape)}")
        return self.attention_net(features)[:, 0]

    def slide_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """softmax(scores over the tiles) · features -> [D] (CHIEF's 'WSI_feature')."""
        if features.shape[0] == 0:
            raise ValueError("CHIEF slide embedding needs at least one tile")
        weights = torch.softmax(self.raw_attention(features), dim=0)
        return weights @ features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.raw_attention(features)


def build(arch: dict) -> CHIEF:
    return CHIEF(size=tuple(arch["size"]), n_classes=arch.get("n_classes", 2), text_dim=arch.get("text_dim", 768))
