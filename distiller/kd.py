"""Hinton's knowledge distillation: the KD baseline of the paper's tables, and the KD term of CoCoRD+KD."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from distiller.base import Distiller, register


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean (as in CRD/mdistiller)."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (T * T)


@register("kd")
class KD(Distiller):
    n_views = 1

    def __init__(self, student, teacher, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        self.w_cls, self.w_kd, self.T = opt["loss_cls"], opt["loss_kd"], opt["kd_T"]

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.student(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss_cls = F.cross_entropy(logits, labels)
        loss_kd = kd_loss(logits, teacher_logits, self.T)
        loss = loss_cls * self.w_cls + loss_kd * self.w_kd
        return {"loss": loss, "loss_cls": loss_cls, "loss_kd": loss_kd, "logits": logits}

    @staticmethod
    def experiment_name(opt: dict[str, Any]) -> str:
        return (f"S_{opt['student_model']}_T_{opt['teacher_model']}_{opt['dataset']}_kd_"
                f"cls{float(opt['loss_cls'])}kd{float(opt['loss_kd'])}T{float(opt['kd_T'])}")
