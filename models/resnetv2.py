"""CRD's CIFAR ResNet50 (resnetv2.py): bottlenecks [3, 4, 6, 3], 3x3 stride-1 stem, `shortcut`, `linear`."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel, flatten, init_convs_kaiming, run_stages
from .registry import register


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        # An empty Sequential is the identity and has no keys, as in the original.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def residual_sum(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return self.bn3(self.conv3(out)) + self.shortcut(x)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual_sum(x), inplace=True)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.residual_sum(x)
        return F.relu(pre), pre


class ResNetV2(ZooModel):
    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 512 * Bottleneck.expansion
        self.linear = nn.Linear(self.feature_dim, num_classes)
        init_convs_kaiming(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(Bottleneck(self.in_planes, planes, s))
            self.in_planes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return flatten(self.avgpool(x))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # f0 is the stem after its ReLU whatever `preact` says; f1-f4 the stages (pre-ReLU sums with preact).
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x, feats = run_stages(stem, (self.layer1, self.layer2, self.layer3, self.layer4), preact)
        return [*feats, flatten(self.avgpool(x))]

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]

    def classify(self, features: Tensor) -> Tensor:
        return self.linear(features)


@register("ResNet50")
def resnet50_cifar(num_classes: int = 100) -> ResNetV2:
    return ResNetV2((3, 4, 6, 3), num_classes)
