"""FT, factor transfer (Kim et al., NeurIPS 2018), as RepDistiller computes it (`--distill factor`).

A two-stage method (distiller/two_stage.py). Init stage: the Paraphraser (a convolutional autoencoder, no
BatchNorm) learns to reconstruct the teacher's last stage map (`feats[-2]`), MSE, with the student untouched;
its learning rate is 0.01 for the CIFAR ResNet and WRN students (RepDistiller's list: resnet8 ... resnet110,
resnet8x4, resnet32x4, wrn_16_1 ... wrn_40_2, i.e. exactly the models of those two families), else the run's.
Main stage: loss_cls x CE + loss_kd x KD + loss_factor x FT loss, the L1 distance of the L2-normalised factors
(channel mean of the squared map) of the Translator (student side, trained, BatchNorm) and of the Paraphraser's
encoder (teacher side, frozen in eval mode).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distiller.base import register
from distiller.kd import KD_OPTIONS, LOSS_CLS, ce_and_kd
from distiller.two_stage import INIT_OPTIONS, TwoStage, stage_shapes, train_only
from models import build_model
from models.resnet import ResNet
from models.wrn import WideResNet
from options.schema import NONNEG, Field

FT_INIT_LR = 0.01
FT_INIT_LR_FAMILIES = (ResNet, WideResNet)  # the students RepDistiller's pretrain.py lists for lr 0.01


def conv_stack(convs: list[nn.Module], channels: list[int], use_bn: bool) -> nn.Sequential:
    """conv, BatchNorm (or an empty Sequential), LeakyReLU(0.1) for each conv: models/util.py's layout."""
    layers: list[nn.Module] = []
    for conv, c in zip(convs, channels):
        layers += [conv, nn.BatchNorm2d(c) if use_bn else nn.Sequential(), nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """RepDistiller's Paraphraser(t_shape, k=0.5, use_bn=False)."""

    def __init__(self, t_shape: torch.Size, k: float = 0.5, use_bn: bool = False):
        super().__init__()
        c_in = t_shape[1]
        c_out = int(t_shape[1] * k)
        self.encoder = conv_stack([nn.Conv2d(c_in, c_in, 3, 1, 1), nn.Conv2d(c_in, c_out, 3, 1, 1),
                                   nn.Conv2d(c_out, c_out, 3, 1, 1)], [c_in, c_out, c_out], use_bn)
        self.decoder = conv_stack([nn.ConvTranspose2d(c_out, c_out, 3, 1, 1), nn.ConvTranspose2d(c_out, c_in, 3, 1, 1),
                                   nn.ConvTranspose2d(c_in, c_in, 3, 1, 1)], [c_out, c_in, c_in], use_bn)

    def forward(self, f: torch.Tensor, is_factor: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(f)
        return factor if is_factor else (factor, self.decoder(factor))


class Translator(nn.Module):
    """RepDistiller's Translator(s_shape, t_shape, k=0.5, use_bn=True)."""

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size, k: float = 0.5, use_bn: bool = True):
        super().__init__()
        c_in = s_shape[1]
        c_out = int(t_shape[1] * k)
        self.encoder = conv_stack([nn.Conv2d(c_in, c_in, 3, 1, 1), nn.Conv2d(c_in, c_out, 3, 1, 1),
                                   nn.Conv2d(c_out, c_out, 3, 1, 1)], [c_in, c_out, c_out], use_bn)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.encoder(f)


def factor(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))


def factor_transfer_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """RepDistiller's FactorTransfer (p1 2, p2 1): the larger map average-pooled to the smaller's size."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return (factor(f_s) - factor(f_t)).abs().mean()


@register("factor")
class FT(TwoStage):
    n_views = 1
    options = {**LOSS_CLS, **KD_OPTIONS, "loss_factor": Field(200.0, "float", *NONNEG), "factor": INIT_OPTIONS}

    def __init__(self, student, teacher, opt: dict[str, Any], train_labels: torch.Tensor | None = None):
        super().__init__(student, teacher, opt)
        self.w_cls, self.w_kd, self.kd_T, self.w_factor = opt["loss_cls"], opt["loss_kd"], opt["kd_T"], \
            opt["loss_factor"]
        s_shape, t_shape = stage_shapes(student, opt)[-2], stage_shapes(teacher, opt)[-2]
        self.paraphraser = Paraphraser(t_shape)
        self.translator = Translator(s_shape, t_shape)
        train_only(self, self.trainable_modules())

    @classmethod
    def init_learning_rate(cls, opt: dict[str, Any]) -> float:
        with torch.device("meta"):  # the class only: nothing is allocated
            student = build_model(opt["student_model"], opt["n_cls"])
        return FT_INIT_LR if isinstance(student, FT_INIT_LR_FAMILIES) else opt["learning_rate"]

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.translator]

    def frozen_modules(self) -> list[nn.Module]:
        return [*super().frozen_modules(), self.paraphraser]

    def init_modules(self) -> list[nn.Module]:
        return [self.paraphraser]

    def init_forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            f_t = self.teacher.forward_stages(x)[0][-2]
        _, reconstruction = self.paraphraser(f_t)
        return {"loss": F.mse_loss(reconstruction, f_t)}

    def forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        feats, logits = self.student.forward_stages(x)
        with torch.no_grad():
            teacher_feats, teacher_logits = self.teacher.forward_stages(x)
            factor_t = self.paraphraser(teacher_feats[-2], is_factor=True)
        loss_factor = factor_transfer_loss(self.translator(feats[-2]), factor_t)
        out = ce_and_kd(logits, labels, teacher_logits, self.w_cls, self.w_kd, self.kd_T)
        out.update(loss_factor=loss_factor, loss=out["loss"] + loss_factor * self.w_factor, logits=logits)
        return out
