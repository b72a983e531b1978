"""torchvision's ImageNet ResNets with the zoo interface; keys stay torchvision's so its checkpoints load."""
from __future__ import annotations

from functools import partial

from torch import Tensor
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

    def classify(self, features: Tensor) -> Tensor:
        return self.fc(features)


_CONFIGS = {
    "resnet18": (tv.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv.Bottleneck, [3, 4, 23, 3]),
}
for _name, (_block, _layers) in _CONFIGS.items():
    register(_name, partial(ImageNetResNet, _block, _layers))
