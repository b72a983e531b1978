"""Hinton's knowledge distillation: the KD baseline of the paper's tables, and the KD term of CoCoRD+KD."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from distiller.base import Distiller, register
from options.schema import NONNEG, POS, Field, OptionsError

LOSS_CLS = {"loss_cls": Field(1.0, "float", *NONNEG)}
KD_OPTIONS = {
    "loss_kd": Field(0.0, "float", *NONNEG),  # weight of the KD term; 0 turns it off (plain CoCoRD)
    "kd_T": Field(4.0, "float", *POS),        # its temperature
}


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean (as in CRD/mdistiller).

    Written out (xlogy is the 0 log 0 = 0 of kl_div) rather than F.kl_div, which torch.func.vmap can only
    run one trial at a time."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    return (torch.xlogy(p_t, p_t) - p_t * log_p_s).sum() / student_logits.shape[0] * (T * T)


def ce_and_kd(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | Callable[[], torch.Tensor],
              w_cls: float, w_kd: float, T: float) -> dict[str, torch.Tensor]:
    """RepDistiller's `gamma x CE + alpha x KD` part of every baseline's loss: the terms, and `loss` their weighted
    sum. The KD term only when its weight is above 0 (RepDistiller's alpha 0 adds an exact zero);
    `teacher_logits` may be a function, then run only for it."""
    out = {"loss_cls": F.cross_entropy(logits, labels)}
    out["loss"] = out["loss_cls"] * w_cls
    if w_kd > 0:
        with torch.no_grad():
            target = teacher_logits() if callable(teacher_logits) else teacher_logits
        out["loss_kd"] = kd_loss(logits, target, T)
        out["loss"] = out["loss"] + out["loss_kd"] * w_kd
    return out


@register("kd")
class KD(Distiller):
    n_views = 1
    options = {**LOSS_CLS, **KD_OPTIONS}

    def __init__(self, student, teacher, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        self.w_cls, self.w_kd, self.T = opt["loss_cls"], opt["loss_kd"], opt["kd_T"]

    @classmethod
    def check_options(cls, opt: dict[str, Any], world_size: int = 1) -> None:
        if opt["loss_kd"] == 0:
            raise OptionsError("distill: kd with loss_kd 0 is plain training; set loss_kd "
                               "(CRD's KD baseline: loss_cls 0.1, loss_kd 0.9, kd_T 4)")

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.student(x)
        return {**ce_and_kd(logits, labels, lambda: self.teacher(x), self.w_cls, self.w_kd, self.T), "logits": logits}

    @classmethod
    def named_options(cls) -> tuple[str, ...]:
        return ("loss_cls", "loss_kd", "kd_T")

    @classmethod
    def experiment_name(cls, opt: dict[str, Any]) -> str:
        return (f"S_{opt['student_model']}_T_{opt['teacher_model']}_{opt['dataset']}_kd_"
                f"cls{float(opt['loss_cls'])}kd{float(opt['loss_kd'])}T{float(opt['kd_T'])}")
