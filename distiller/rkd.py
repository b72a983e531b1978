"""Relational knowledge distillation (Park et al., CVPR 2019) as RepDistiller computes it
(distiller_zoo/RKD.py, helper/loops.py): on the pooled features, w_d x smooth-L1 between the batch's pairwise
distances (each divided by the mean of its nonzero entries) plus w_a x smooth-L1 between the cosines of the
angles every triple of samples makes; the teacher's side without gradient. Weight `loss_rkd` (beta, 1 in
RepDistiller's scripts).

Two of RepDistiller's operations read values on the host and are written without it, computing the same:
the mean of the nonzero distances (`d[d > 0].mean()`) is their sum over their count, and the zeroed diagonal
(`res[range(n), range(n)] = 0`) a `masked_fill` with the identity's mask."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller.base import register
from distiller.feature_method import FeatureMethod
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, Field


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """RepDistiller's pdist(e, squared=False): Euclidean distances, clamped at sqrt(eps), diagonal 0."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt()
    diagonal = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return res.masked_fill(diagonal, 0)


def normalized_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    positive = d > 0
    return d / (torch.where(positive, d, 0.0).sum() / positive.sum())


def angles(e: Tensor) -> Tensor:
    """Cosines of the angle at sample i between samples j and k, flattened."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return (diff @ diff.transpose(1, 2)).flatten()


@register("rkd")
class RKD(FeatureMethod):
    min_batch = 2  # one sample has no pairs: the term would be NaN (a mean over none)
    options = {
        **LOSS_CLS,
        **KD_OPTIONS,
        "loss_rkd": Field(1.0, "float", *NONNEG),
        "rkd": {"w_d": Field(25.0, "float", *NONNEG), "w_a": Field(50.0, "float", *NONNEG)},  # RKDLoss's weights
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        self.w_d, self.w_a = opt["rkd"]["w_d"], opt["rkd"]["w_a"]

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        student, teacher = feats_s[-1].flatten(1), feats_t[-1].flatten(1)
        with torch.no_grad():
            t_d, t_angle = normalized_distances(teacher), angles(teacher)
        loss_d = F.smooth_l1_loss(normalized_distances(student), t_d)
        loss_a = F.smooth_l1_loss(angles(student), t_angle)
        return self.w_d * loss_d + self.w_a * loss_a
