"""The interface every zoo model shares, so callers never need per-architecture code."""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn


class ZooModel(nn.Module):
    """`forward_features` gives the pooled vector the classifier takes; `classify` maps it to logits.

    `model(x)` returns logits and `model(x, with_features=True)` returns `(features, logits)`;
    `feature_dim` is the length of the feature vector. All subclasses share this `forward`'s code object,
    so torch.compile's per-code-object recompile limit (8) counts every compiled class/mode/flag together:
    a process compiling many (class, train/eval, grad, with_features) combinations should raise
    `torch._dynamo.config.recompile_limit`.
    """

    feature_dim: int
    # State_dict key names that other published versions of this same network use, mapped to ours, so their
    # checkpoints load unchanged (models.checkpoint applies it). Only names differ, never shapes.
    legacy_keys: ClassVar[Mapping[str, str]] = {}

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def classify(self, features: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, with_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        features = self.forward_features(x)
        logits = self.classify(features)
        return (features, logits) if with_features else logits


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Output channel k*g + i = input channel i*(C/g) + k (ShuffleNet's shuffle; g = 1 is the identity)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def flatten(x: Tensor) -> Tensor:
    """(N, C, 1, 1) -> (N, C); works for any memory format."""
    return torch.flatten(x, 1)


def init_convs_kaiming(model: nn.Module) -> None:
    """RepDistiller's conv init: N(0, sqrt(2 / (k*k*out))), i.e. kaiming fan_out/relu; conv biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
