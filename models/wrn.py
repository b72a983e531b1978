"""Wide ResNets of RepDistiller's wrn.py: pre-activation blocks; the projection reads the activated input."""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel, flatten, init_convs_kaiming
from .registry import register


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x), inplace=True)
        h = self.conv2(F.relu(self.bn2(self.conv1(a)), inplace=True))
        # No BN or ReLU after the addition (pre-activation design).
        return (x if self.convShortcut is None else self.convShortcut(a)) + h


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        assert (depth - 4) % 6 == 0, "depth must be 6n + 4"
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])  # the final BN, not a stem BN
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        init_convs_kaiming(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pooled(self.block3(self.block2(self.block1(self.conv1(x)))))

    def pooled(self, x: Tensor) -> Tensor:
        """The head from block3's output: the final bn1, ReLU, pool."""
        return flatten(F.avg_pool2d(F.relu(self.bn1(x), inplace=True), 8))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # f0 is conv1's raw output; f1-f3 the blocks' outputs, which in this pre-activation design come before
        # any BN. With preact the reference passes f1-f3 through the BN that next reads them (block2's and
        # block3's first bn1, the final bn1) a second time, outside the forward: so do we, running statistics
        # updates included, so that a train-mode step leaves the same buffers.
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = self.pooled(f3)
        if preact:
            f1 = self.block2.layer[0].bn1(f1)
            f2 = self.block3.layer[0].bn1(f2)
            f3 = self.bn1(f3)
        return [f0, f1, f2, f3, pooled]

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.block1, self.block2, self.block3]  # not the final bn1, as in the reference

    def classify(self, features: Tensor) -> Tensor:
        return self.fc(features)


for _name, (_depth, _k) in {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}.items():
    register(_name, partial(WideResNet, _depth, _k))
