"""CIFAR ResNets of RepDistiller's resnet.py: post-activation BasicBlocks, three stages, AvgPool2d(8)."""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel, flatten, init_convs_kaiming, run_stages
from .registry import register


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def residual_sum(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU."""
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.bn2(self.conv2(out)) + residual

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual_sum(x), inplace=True)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.residual_sum(x)
        return F.relu(pre), pre


class ResNet(ZooModel):
    """depth = 6n + 2; widths = (stem, stage1, stage2, stage3)."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n + 2"
        n = (depth - 2) // 6
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(widths[3], num_classes)
        self.feature_dim = widths[3]
        init_convs_kaiming(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        return flatten(self.avgpool(x))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # f0 is the stem after its ReLU whatever `preact` says; f1-f3 the stages (pre-ReLU sums with preact).
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x, feats = run_stages(stem, (self.layer1, self.layer2, self.layer3), preact)
        return [*feats, flatten(self.avgpool(x))]

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]  # the reference's ReLU is functional here

    def classify(self, features: Tensor) -> Tensor:
        return self.fc(features)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)
_CONFIGS = {
    "resnet8": (8, _NARROW),
    "resnet14": (14, _NARROW),
    "resnet20": (20, _NARROW),
    "resnet32": (32, _NARROW),
    "resnet44": (44, _NARROW),
    "resnet56": (56, _NARROW),
    "resnet110": (110, _NARROW),
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}
for _name, (_depth, _widths) in _CONFIGS.items():
    register(_name, partial(ResNet, _depth, _widths))
