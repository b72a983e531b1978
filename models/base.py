"""The interface every zoo model shares, so callers never need per-architecture code."""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn


class ZooModel(nn.Module):
    """`forward_features` gives the pooled vector the classifier takes; `classify` maps it to logits.

    `model(x)` returns logits and `model(x, with_features=True)` returns `(features, logits)`;
    `feature_dim` is the length of the feature vector. `forward_stages` and `feature_modules` give the
    intermediate features and the modules that compute them, as CRD's baselines read them.
    All subclasses share this `forward`'s code object, so torch.compile's per-code-object recompile limit (8)
    counts every compiled class/mode/flag together: a process compiling many (class, train/eval, grad,
    with_features) combinations should raise `torch._dynamo.config.recompile_limit`.
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

    def forward_stages(self, x: Tensor, preact: bool = False) -> tuple[list[Tensor], Tensor]:
        """`(feats, logits)`, exactly RepDistiller's `model(x, is_feat=True, preact=preact)`.

        `feats` holds the reference's entries for this architecture, in its order, each with its values: first
        the stem's output, then one entry per stage, pre- or post-activation exactly where the reference has it
        (`preact` changes only the entries the reference changes; nothing for MobileNetV2), and last the pooled
        vector, the same features `model(x, with_features=True)` returns; `logits` are `model(x)`'s. Side effects
        are the reference's too: WRN's preact entries pass through their BatchNorm a second time, which in train
        mode updates those running statistics twice. No entry is overwritten in place afterwards, so a loss may
        read any of them under autograd; it works in train and eval mode, under `torch.func.vmap` with
        `functional_call` (stacked trials) and with channels_last inputs. `model(x)` stays the fast path: it
        computes and keeps none of these entries. torchvision's ResNets, which RepDistiller lacks, follow its
        CIFAR ResNet50. All subclasses share this code object, like `forward`'s (torch.compile's recompile limit
        counts them together).
        """
        feats = self.stage_features(x, preact)
        return feats, self.classify(feats[-1])

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        """The `feats` list of `forward_stages` (each family writes its own)."""
        raise NotImplementedError

    def feature_modules(self) -> list[nn.Module]:
        """RepDistiller's `get_feat_modules()`: the modules that compute the stage features, in its order (what
        the init stage of AB and FSP trains). The parameters and BatchNorms covered are exactly the reference's;
        a parameter-free module (a functional ReLU or pool here) may be left out."""
        raise NotImplementedError


def run_stage(stage: nn.Sequential, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
    """A stage's output and the entry RepDistiller keeps for it: the output itself, or with `preact` what its
    last block's `forward_preact` gives (the value before that block's final ReLU)."""
    if not preact:
        x = stage(x)
        return x, x
    for block in stage[:-1]:
        x = block(x)
    return stage[-1].forward_preact(x)


def run_stages(x: Tensor, stages: tuple[nn.Sequential, ...], preact: bool) -> tuple[Tensor, list[Tensor]]:
    """The stem's output `x` through `stages`: the last stage's output, and the entries RepDistiller keeps for
    them, the stem's first (`run_stage` for each)."""
    feats = [x]
    for stage in stages:
        x, feat = run_stage(stage, x, preact)
        feats.append(feat)
    return x, feats


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
