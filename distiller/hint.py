"""FitNet (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) as RepDistiller computes it
(distiller_zoo/FitNet.py, models/util.py's ConvReg, helper/loops.py): entry `hint_layer` of the student's
feature list, mapped by a trained ConvReg (conv, BatchNorm in train mode, ReLU) onto the teacher's same entry,
mean squared error. Weight `loss_hint` (beta, 100 in RepDistiller's scripts)."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Size, Tensor, nn

from distiller.base import register
from distiller.feature_method import FeatureMethod, probe_features
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, Field, OptionsError


class ConvReg(nn.Module):
    """RepDistiller's convolutional regressor from a student map (N, C, H, W) to a teacher map: a stride-2 conv
    if the student's map is twice as high, a stride-2 transposed conv if half as high, else a conv whose kernel
    shrinks it to the teacher's size; then BatchNorm, and ReLU unless `use_relu` is False."""

    def __init__(self, s_shape: Size, t_shape: Size, use_relu: bool = True):
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise OptionsError(f"a student feature map of {s_h}x{s_w} cannot be regressed onto the teacher's "
                               f"{t_h}x{t_w} (RepDistiller's ConvReg cannot either); choose another pair")
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


@register("hint")
class Hint(FeatureMethod):
    options = {
        **LOSS_CLS,
        **KD_OPTIONS,
        "loss_hint": Field(100.0, "float", *NONNEG),
        "hint": {"hint_layer": Field(2, "int", lambda v: 0 <= v <= 4, "must be 0-4 (an entry of the feature list)")},
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        self.hint_layer = layer = opt["hint"]["hint_layer"]
        shapes = []
        for role, model in (("student", student), ("teacher", teacher)):
            feats = probe_features(model, opt)
            if layer >= len(feats) - 1:
                raise OptionsError(f"hint.hint_layer {layer} is not a feature map of the {role} "
                                   f"{opt[f'{role}_model']}: choose 0-{len(feats) - 2}")
            shapes.append(feats[layer].shape)
        self.regress_s = ConvReg(*shapes)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.regress_s]

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return F.mse_loss(self.regress_s(feats_s[self.hint_layer]), feats_t[self.hint_layer])
