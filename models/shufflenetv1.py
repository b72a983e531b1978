"""ShuffleNet v1 of RepDistiller's ShuffleNetv1.py (groups 3): grouped 1x1s, shuffle, depthwise 3x3."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel, channel_shuffle, flatten, run_stages
from .registry import register


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = int(out_planes / 4)
        self.g1 = 1 if in_planes == 24 else groups  # the first block sees the 24-channel stem: no grouping
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def residual_sum(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.g1)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)  # ReLU after the depthwise BN, as in the original
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return torch.cat([out, res], 1) if self.stride == 2 else out + res  # branch first

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual_sum(x), inplace=True)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.residual_sum(x)
        return F.relu(pre), pre


class ShuffleNet(ZooModel):
    def __init__(self, out_planes: tuple[int, int, int], num_blocks: tuple[int, int, int], groups: int,
                 num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.feature_dim = out_planes[2]

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # Block 0 (stride 2) concatenates its input, so its branch makes only the missing channels.
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, 2 if i == 0 else 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        return flatten(F.avg_pool2d(x, 4))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # f0 is the stem after its ReLU whatever `preact` says; f1-f3 the stages (pre-ReLU sums with preact).
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x, feats = run_stages(stem, (self.layer1, self.layer2, self.layer3), preact)
        return [*feats, flatten(F.avg_pool2d(x, 4))]

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]

    def classify(self, features: Tensor) -> Tensor:
        return self.linear(features)


@register("ShuffleV1")
def shuffle_v1(num_classes: int = 100) -> ShuffleNet:
    return ShuffleNet((240, 480, 960), (4, 8, 4), groups=3, num_classes=num_classes)
