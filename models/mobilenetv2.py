"""CRD's mobile_half (mobilenetv2.py): width 0.5, expansion 6, stride-2 stem, CIFAR strides."""
from __future__ import annotations

from torch import Tensor, nn

from .base import ZooModel, flatten, init_convs_kaiming
from .registry import register


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        # The 1x1 expand conv exists even when expand_ratio == 1 (keys conv.0 .. conv.7).
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(ZooModel):
    # The published CoCoRD code's copy has a plain Linear classifier where CRD's has Sequential(Linear):
    # the same tensors under other names.
    legacy_keys = {"classifier.weight": "classifier.0.weight", "classifier.bias": "classifier.0.bias"}

    def __init__(self, T: int = 6, width_mult: float = 0.5, input_size: int = 32, num_classes: int = 100):
        super().__init__()
        setting = [  # t, c, n, s: stage 0 keeps t = 1; stage 1 has stride 1 on CIFAR
            (1, 16, 1, 1),
            (T, 24, 2, 1),
            (T, 32, 3, 2),
            (T, 64, 4, 2),
            (T, 96, 3, 1),
            (T, 160, 3, 2),
            (T, 320, 1, 1),
        ]
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            cout = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(cin, cout, stride, t))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        assert width_mult <= 1.0, "only width_mult <= 1 keeps the 1280-wide head unscaled"
        self.feature_dim = 1280
        self.conv2 = _conv_bn_relu(cin, self.feature_dim, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.feature_dim, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        init_convs_kaiming(self)
        nn.init.normal_(self.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return flatten(self.avgpool(self.conv2(x)))

    def stage_features(self, x: Tensor, preact: bool) -> list[Tensor]:
        # The reference ignores `preact`: f0 is the stem (after its ReLU), f1-f4 the outputs of blocks 1, 2, 4
        # and 6 (no ReLU ends a block), then the pooled vector after conv2 (after its ReLU).
        x = self.conv1(x)
        feats = [x]
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in (1, 2, 4, 6):
                feats.append(x)
        feats.append(flatten(self.avgpool(self.conv2(x))))
        return feats

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.blocks]  # not conv2, as in the reference

    def classify(self, features: Tensor) -> Tensor:
        return self.classifier(features)


@register("MobileNetV2")
def mobile_half(num_classes: int = 100) -> MobileNetV2:
    return MobileNetV2(T=6, width_mult=0.5, num_classes=num_classes)
