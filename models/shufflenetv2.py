"""ShuffleNet v2 (net_size 1) of RepDistiller's ShuffleNetv2.py: channel split, 2-group shuffles."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel, channel_shuffle, flatten, run_stages
from .registry import register


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = int(in_channels * split_ratio)
        c = in_channels - self.split
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The passed-through half and the branch before its final ReLU."""
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x2)), inplace=True)
        return x1, self.bn3(self.conv3(self.bn2(self.conv2(out))))

    def forward(self, x: Tensor) -> Tensor:
        x1, branch = self.halves(x)
        return channel_shuffle(torch.cat([x1, F.relu(branch, inplace=True)], 1), 2)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The reference's pre-activation entry is the concatenation before the shuffle: its channels come in
        # another order than the output's.
        x1, branch = self.halves(x)
        return channel_shuffle(torch.cat([x1, F.relu(branch)], 1), 2), torch.cat([x1, branch], 1)


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))), inplace=True)
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ZooModel):
    def __init__(self, out_channels: tuple[int, int, int, int], num_blocks: tuple[int, int, int],
                 num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.feature_dim = out_channels[3]

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.pooled(self.layer3(self.layer2(self.layer1(x))))

    def pooled(self, x: Tensor) -> Tensor:
        """The head from the last stage's output: conv2, bn2, ReLU, pool."""
        return flatten(F.avg_pool2d(F.relu(self.bn2(self.conv2(x)), inplace=True), 4))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # f0 is the stem after its ReLU whatever `preact` says; f1-f3 the stages (see forward_preact), f4 the
        # pooled vector after conv2, bn2 and ReLU.
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x, feats = run_stages(stem, (self.layer1, self.layer2, self.layer3), preact)
        return [*feats, self.pooled(x)]

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]  # not conv2 and bn2, as in the reference

    def classify(self, features: Tensor) -> Tensor:
        return self.linear(features)


@register("ShuffleV2")
def shuffle_v2(num_classes: int = 100) -> ShuffleNetV2:
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes=num_classes)
