"""FSP, flow of solution procedure (Yim et al., CVPR 2017), as RepDistiller computes it (`--distill fsp`).

A two-stage method (distiller/two_stage.py). Init stage: the student's feature modules train on the FSP loss,
the mean squared difference of the student's and the teacher's FSP matrices (the Gram matrix, averaged over
positions, of each pair of consecutive entries of `feats[:-1]`, the larger map average-pooled to the smaller),
summed over the pairs. Main stage: cross-entropy (+ KD), nothing else: RepDistiller's method loss is 0 there, so
its beta is ignored and this method has no weight for it.

Like RepDistiller's FSP, it needs the student's and the teacher's stages to have the same channels (e.g. it
cannot pair resnet32x4 with ShuffleV1) and refuses other pairs when built.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distiller.base import register
from distiller.kd import KD_OPTIONS, LOSS_CLS, ce_and_kd
from distiller.two_stage import INIT_OPTIONS, TwoStage, stage_shapes, train_only
from options.schema import OptionsError


def fsp_matrices(g: list[torch.Tensor]) -> list[torch.Tensor]:
    """FSP.compute_fsp: [N, C_top, C_bottom] for each consecutive pair, mean over positions of bottom x top.

    A batched matrix product divided by the positions: the reference's broadcast product then mean, without
    its N x C_top x C_bottom x positions intermediate."""
    matrices = []
    for bottom, top in zip(g[:-1], g[1:]):
        b_h, t_h = bottom.shape[2], top.shape[2]
        if b_h > t_h:
            bottom = F.adaptive_avg_pool2d(bottom, (t_h, t_h))
        elif b_h < t_h:
            top = F.adaptive_avg_pool2d(top, (b_h, b_h))
        bottom, top = bottom.flatten(2), top.flatten(2)
        matrices.append(torch.bmm(top, bottom.transpose(1, 2)) / bottom.shape[2])
    return matrices


def fsp_loss(g_s: list[torch.Tensor], g_t: list[torch.Tensor]) -> torch.Tensor:
    return sum((s - t).pow(2).mean() for s, t in zip(fsp_matrices(g_s), fsp_matrices(g_t)))


@register("fsp")
class FSP(TwoStage):
    n_views = 1
    options = {**LOSS_CLS, **KD_OPTIONS, "fsp": INIT_OPTIONS}

    def __init__(self, student, teacher, opt: dict[str, Any], train_labels: torch.Tensor | None = None):
        super().__init__(student, teacher, opt)
        self.w_cls, self.w_kd, self.kd_T = opt["loss_cls"], opt["loss_kd"], opt["kd_T"]
        s_channels = [s[1] for s in stage_shapes(student, opt)[:-1]]
        t_channels = [t[1] for t in stage_shapes(teacher, opt)[:-1]]
        if s_channels != t_channels:
            raise OptionsError(f"distill: fsp needs student and teacher stages of equal channels, but "
                               f"{opt['student_model']} has {s_channels} and {opt['teacher_model']} {t_channels} "
                               "(RepDistiller's FSP cannot pair them either); choose another pair or method")
        train_only(self, self.trainable_modules())

    def init_modules(self) -> list[nn.Module]:
        return list(self.student.feature_modules())

    def init_forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
        feats, _ = self.student.forward_stages(x)
        with torch.no_grad():
            teacher_feats, _ = self.teacher.forward_stages(x)
        return {"loss": fsp_loss(feats[:-1], teacher_feats[:-1])}

    def forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        logits = self.student(x)
        return {**ce_and_kd(logits, labels, lambda: self.teacher(x), self.w_cls, self.w_kd, self.kd_T),
                "logits": logits}
