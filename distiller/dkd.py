"""DKD, Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), as mdistiller computes it.

mdistiller's distillers/DKD.py: loss = CE_WEIGHT x CE + min(epoch / WARMUP, 1) x (ALPHA x TCKD + BETA x NCKD),
TCKD the KL divergence of the binary (target, rest) probabilities at temperature T, NCKD the KL divergence over
the non-target classes (the target logit lowered by 1000 before the softmax), each x T^2 / batch. Defaults are
its CIFAR-100 ones (CE 1, alpha 1, beta 8, T 4, warm-up 20 epochs); its per-pair configs change only beta.

Stackable: the masks come from a scatter of the labels (no Python data), the KL divergences are written with
xlogy (as distiller/kd.py), and the warm-up factor is a buffer `start_epoch` fills in place, so a captured CUDA
graph and every stacked trial read the epoch's value; forward reads nothing back to the host.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from distiller.base import Distiller, register
from distiller.kd import LOSS_CLS
from options.schema import NONNEG, POS, Field

OPTIONS = {
    **LOSS_CLS,  # mdistiller's DKD.CE_WEIGHT
    "dkd": {
        "alpha": Field(1.0, "float", *NONNEG),  # weight of TCKD
        "beta": Field(8.0, "float", *NONNEG),   # weight of NCKD (mdistiller's per-pair configs: 2, 6 or 8)
        "T": Field(4.0, "float", *POS),
        "warmup": Field(20, "int", *POS),       # epochs of the linear warm-up of the DKD term
    },
}


def kl_sum(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """F.kl_div(log_q, p, reduction='sum'), written out (xlogy is its 0 log 0 = 0) so that vmap can batch it."""
    return (torch.xlogy(p, p) - p * log_q).sum()


def dkd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, T: float) -> torch.Tensor:
    """mdistiller's dkd_loss: alpha x TCKD + beta x NCKD."""
    gt_mask = torch.zeros_like(logits_student).scatter(1, target.reshape(-1, 1), 1.0)
    other_mask = 1.0 - gt_mask
    pred_student = F.softmax(logits_student / T, dim=1)
    pred_teacher = F.softmax(logits_teacher / T, dim=1)
    pred_student = torch.cat([(pred_student * gt_mask).sum(1, keepdim=True),
                              (pred_student * other_mask).sum(1, keepdim=True)], dim=1)
    pred_teacher = torch.cat([(pred_teacher * gt_mask).sum(1, keepdim=True),
                              (pred_teacher * other_mask).sum(1, keepdim=True)], dim=1)
    batch = target.shape[0]
    tckd = kl_sum(torch.log(pred_student), pred_teacher) * (T**2) / batch
    pred_teacher_part2 = F.softmax(logits_teacher / T - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / T - 1000.0 * gt_mask, dim=1)
    nckd = kl_sum(log_pred_student_part2, pred_teacher_part2) * (T**2) / batch
    return alpha * tckd + beta * nckd


@register("dkd")
class DKD(Distiller):
    n_views = 1
    options = OPTIONS

    def __init__(self, student, teacher, opt: dict[str, Any], train_labels: torch.Tensor | None = None):
        super().__init__(student, teacher, opt)
        d = opt["dkd"]
        self.w_cls, self.alpha, self.beta, self.T, self.warmup = opt["loss_cls"], d["alpha"], d["beta"], d["T"], \
            d["warmup"]
        # min(epoch / warmup, 1), written by start_epoch; epoch 1's value until the first call.
        self.register_buffer("warmup_factor", torch.tensor(min(1 / self.warmup, 1.0)), persistent=False)

    def start_epoch(self, epoch: int) -> None:
        self.warmup_factor.fill_(min(epoch / self.warmup, 1.0))

    def forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        logits = self.student(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss_cls = F.cross_entropy(logits, labels)
        loss_dkd = self.warmup_factor * dkd_loss(logits, teacher_logits, labels, self.alpha, self.beta, self.T)
        loss = loss_cls * self.w_cls + loss_dkd
        return {"loss": loss, "loss_cls": loss_cls, "loss_dkd": loss_dkd, "logits": logits}
