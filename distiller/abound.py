"""AB, activation-boundary distillation (Heo et al., AAAI 2019), as RepDistiller computes it (`--distill abound`).

A two-stage method (distiller/two_stage.py). Init stage: the Connector (one ConvReg without ReLU per stage whose
shape differs from the teacher's, else the identity) and the student's feature modules train on ABLoss between
the connected student stages and the teacher's, pre-activation features (`preact=True`) of the stages between
the stem and the pooled vector. Main stage: cross-entropy (+ KD), nothing else: RepDistiller's method loss is 0
there, so its beta is ignored and this method has no weight for it; the connector stays in eval mode, untrained.
The student still runs with `preact=True`, as the reference's loop does (for WRNs that applies a BatchNorm a
second time, which updates its running statistics twice in train mode).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distiller.base import register
from distiller.hint import ConvReg
from distiller.kd import KD_OPTIONS, LOSS_CLS, ce_and_kd
from distiller.two_stage import INIT_OPTIONS, TwoStage, stage_shapes, train_only
from options.schema import OptionsError

MARGIN = 1.0  # ABLoss's margin


class Connector(nn.Module):
    """RepDistiller's Connector: per stage, the identity where student and teacher agree in channels and
    height, else a ConvReg without ReLU."""

    def __init__(self, s_shapes: list[torch.Size], t_shapes: list[torch.Size]):
        super().__init__()
        self.connectors = nn.ModuleList(
            nn.Sequential() if s[1] == t[1] and s[2] == t[2] else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes, strict=True))

    def forward(self, g_s: list[torch.Tensor]) -> list[torch.Tensor]:
        return [connector(g) for connector, g in zip(self.connectors, g_s)]


def alternative_l2(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ABLoss's criterion_alternative_l2: a squared hinge at +-margin wherever the student's activation
    boundary (source > 0) disagrees with the teacher's."""
    loss = ((source + MARGIN) ** 2 * ((source > -MARGIN) & (target <= 0)).to(source.dtype) +
            (source - MARGIN) ** 2 * ((source <= MARGIN) & (target > 0)).to(source.dtype))
    return torch.abs(loss).sum()


def ab_loss(g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> torch.Tensor:
    """ABLoss summed over the stages: stage i of n weighted 2^(i - n + 1), / batch / 1000 x 3."""
    n, batch = len(g_s), g_s[0].shape[0]
    losses = [2 ** (i - n + 1) * alternative_l2(s, t) for i, (s, t) in enumerate(zip(g_s, g_t))]
    return sum(loss / batch / 1000 * 3 for loss in losses)


@register("abound")
class AB(TwoStage):
    n_views = 1
    options = {**LOSS_CLS, **KD_OPTIONS, "abound": INIT_OPTIONS}

    def __init__(self, student, teacher, opt: dict[str, Any], train_labels: torch.Tensor | None = None):
        super().__init__(student, teacher, opt)
        self.w_cls, self.w_kd, self.kd_T = opt["loss_cls"], opt["loss_kd"], opt["kd_T"]
        s_shapes, t_shapes = stage_shapes(student, opt)[1:-1], stage_shapes(teacher, opt)[1:-1]
        if len(s_shapes) != len(t_shapes):
            raise OptionsError(f"distill: abound pairs the stages of student and teacher one to one, but "
                               f"{opt['student_model']} has {len(s_shapes)} and {opt['teacher_model']} "
                               f"{len(t_shapes)} (RepDistiller's Connector cannot pair them either); choose another "
                               "pair or method")
        self.connector = Connector(s_shapes, t_shapes)
        train_only(self, self.trainable_modules())

    def frozen_modules(self) -> list[nn.Module]:
        return [*super().frozen_modules(), self.connector]

    def init_modules(self) -> list[nn.Module]:
        return [self.connector, *self.student.feature_modules()]

    def init_forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
        feats, _ = self.student.forward_stages(x, preact=True)
        with torch.no_grad():
            teacher_feats, _ = self.teacher.forward_stages(x, preact=True)
        return {"loss": ab_loss(self.connector(feats[1:-1]), teacher_feats[1:-1])}

    def forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        _, logits = self.student.forward_stages(x, preact=True)
        return {**ce_and_kd(logits, labels, lambda: self.teacher(x), self.w_cls, self.w_kd, self.kd_T),
                "logits": logits}
