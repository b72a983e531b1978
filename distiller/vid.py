"""Variational information distillation (Ahn et al., CVPR 2019) as RepDistiller computes it
(distiller_zoo/VID.py, train_student.py, helper/loops.py): for each stage feature (the feature list without
its first and last entries), a trained regressor (three 1x1 convolutions, ReLUs between) predicts the
teacher's map from the student's (the larger average-pooled to the smaller) as the mean of a Gaussian whose
per-channel variance softplus(log_scale) + eps is learnt too; the term is the mean negative log-likelihood
(without its constant), summed over the stages. The regressors and variances (`vid`, one VIDLoss per stage)
are trained with the student. Weight `loss_vid` (beta, 1 in RepDistiller's scripts)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from distiller.base import register
from distiller.feature_method import FeatureMethod, pool_to_match, probe_features
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, Field


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, padding=0, bias=False)


class VIDLoss(nn.Module):
    """RepDistiller's VIDLoss: regressor (state_dict keys regressor.0/2/4) and log_scale."""

    def __init__(self, num_input_channels: int, num_mid_channel: int, num_target_channels: int,
                 init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            conv1x1(num_input_channels, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_target_channels),
        )
        # softplus(log_scale) + eps starts at init_pred_var
        self.log_scale = nn.Parameter(math.log(math.exp(init_pred_var - eps) - 1.0) * torch.ones(num_target_channels))
        self.eps = eps

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        input, target = pool_to_match(input, target)
        pred_mean = self.regressor(input)
        # log(1 + exp(.)) written out as RepDistiller does (F.softplus switches to x above its threshold)
        pred_var = (torch.log(1.0 + torch.exp(self.log_scale)) + self.eps).view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return neg_log_prob.mean()


@register("vid")
class VID(FeatureMethod):
    options = {**LOSS_CLS, **KD_OPTIONS, "loss_vid": Field(1.0, "float", *NONNEG)}

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        s_n = [f.shape[1] for f in probe_features(student, opt)[1:-1]]
        t_n = [f.shape[1] for f in probe_features(teacher, opt)[1:-1]]
        self.vid = nn.ModuleList([VIDLoss(s, t, t) for s, t in zip(s_n, t_n)])

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.vid]

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        total = 0
        for f_s, f_t, criterion in zip(feats_s[1:-1], feats_t[1:-1], self.vid):
            total = total + criterion(f_s, f_t)
        return total
