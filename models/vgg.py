"""VGG with BN of RepDistiller's vgg.py: five conv blocks, max-pools between them, one Linear."""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel, flatten, init_convs_kaiming
from .registry import register

_WIDTHS = (64, 128, 256, 512, 512)
# Convs per block0..block4.
_CONFIGS = {
    "vgg8": (1, 1, 1, 1, 1),
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def _make_block(cin: int, cout: int, convs: int) -> nn.Sequential:
    """conv, BN, ReLU, ..., conv, BN: the trailing ReLU is applied in forward (keeps RepDistiller's indices)."""
    layers: list[nn.Module] = []
    for _ in range(convs):
        layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    def __init__(self, convs: tuple[int, ...], num_classes: int = 100):
        super().__init__()
        cins = (3,) + _WIDTHS[:-1]
        self.block0 = _make_block(cins[0], _WIDTHS[0], convs[0])
        self.block1 = _make_block(cins[1], _WIDTHS[1], convs[1])
        self.block2 = _make_block(cins[2], _WIDTHS[2], convs[2])
        self.block3 = _make_block(cins[3], _WIDTHS[3], convs[3])
        self.block4 = _make_block(cins[4], _WIDTHS[4], convs[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        self.feature_dim = 512
        init_convs_kaiming(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        h = x.shape[2]  # a static shape, not a tensor value: fine under torch.compile
        x = self.pool0(F.relu(self.block0(x), inplace=True))
        x = self.pool1(F.relu(self.block1(x), inplace=True))
        x = self.pool2(F.relu(self.block2(x), inplace=True))
        x = F.relu(self.block3(x), inplace=True)
        if h == 64:  # the original pools here only for 64x64 inputs, never at 32x32
            x = self.pool3(x)
        x = F.relu(self.block4(x), inplace=True)
        return flatten(self.pool4(x))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # f0 is block0 after its ReLU whatever `preact` says; f1-f4 blocks 1-4 after their ReLU, or before it
        # with preact (then that ReLU must not overwrite them); each entry is taken before the pool that follows.
        h = x.shape[2]
        x = F.relu(self.block0(x), inplace=True)
        feats = [x]
        x = self.pool0(x)
        pools = (self.pool1, self.pool2, self.pool3 if h == 64 else None, self.pool4)
        for block, pool in zip((self.block1, self.block2, self.block3, self.block4), pools):
            pre = block(x)
            x = F.relu(pre, inplace=not preact)
            feats.append(pre if preact else x)
            if pool is not None:
                x = pool(x)
        feats.append(flatten(x))
        return feats

    def feature_modules(self) -> list[nn.Module]:
        return [self.block0, self.pool0, self.block1, self.pool1, self.block2, self.pool2, self.block3, self.pool3,
                self.block4, self.pool4]

    def classify(self, features: Tensor) -> Tensor:
        return self.classifier(features)


for _name, _convs in _CONFIGS.items():
    register(_name, partial(VGG, _convs))
