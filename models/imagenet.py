"""torchvision's ImageNet ResNets with the zoo interface; keys stay torchvision's so its checkpoints load."""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv

from .base import ZooModel, flatten
from .registry import register


class ImageNetResNet(ZooModel, tv.ResNet):
    """A torchvision ResNet (weights=None, never downloads) whose forward is ZooModel's."""

    def __init__(self, block: type[tv.BasicBlock | tv.Bottleneck], layers: list[int], num_classes: int = 100):
        tv.ResNet.__init__(self, block, layers, num_classes=num_classes)
        self.feature_dim = 512 * block.expansion

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return flatten(self.avgpool(x))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # RepDistiller has no ImageNet zoo; this follows its CIFAR ResNet50: f0 the stem after its ReLU (before
        # the max-pool), one entry per stage (the last block's sum before its ReLU with preact), then pooled.
        x = self.relu(self.bn1(self.conv1(x)))
        feats = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            if preact:
                feat = _residual_sum(layer[-1], layer[:-1](x))
                x = F.relu(feat)
            else:
                x = feat = layer(x)
            feats.append(feat)
        feats.append(flatten(self.avgpool(x)))
        return feats

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.maxpool, self.layer1, self.layer2, self.layer3, self.layer4]

    def classify(self, features: Tensor) -> Tensor:
        return self.fc(features)


def _residual_sum(block: tv.BasicBlock | tv.Bottleneck, x: Tensor) -> Tensor:
    """torchvision's block forward without its final ReLU."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, tv.Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        return block.bn3(block.conv3(out)) + identity
    return block.bn2(block.conv2(out)) + identity


_CONFIGS = {
    "resnet18": (tv.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv.Bottleneck, [3, 4, 23, 3]),
}
for _name, (_block, _layers) in _CONFIGS.items():
    register(_name, partial(ImageNetResNet, _block, _layers))
