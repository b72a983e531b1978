"""What RepDistiller's feature baselines share: its `train_distill` step and its shape probe.

RepDistiller trains every baseline on `gamma x CE + alpha x KD(kd_T) + beta x term` (helper/loops.py), the term
read from the student's and the teacher's `model(x, is_feat=True)` lists, the teacher's under no_grad. Here
gamma is `loss_cls`, alpha `loss_kd` (with `kd_T`, Hinton's KD as distiller/kd.py computes it) and beta the
method's own weight `loss_<name>`; a subclass declares those options and writes `distill_loss`. Its modules
are sized, as RepDistiller sizes them, from the features of a probe batch (`probe_features`), never from
a list of model names.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distiller.base import Distiller
from distiller.kd import ce_and_kd

PROBE_SIZE = {"cifar100": 32, "imagenet": 224}  # the images' side, by dataset


@torch.no_grad()
def probe_features(model: nn.Module, opt: dict[str, Any]) -> list[Tensor]:
    """RepDistiller's probe: the feature list of a batch of two images in eval mode. Zeros rather than random
    images (only the shapes are read), so no random number is drawn; nothing of the model changes, and on the
    meta device (a memory estimate) nothing is computed."""
    weight = next(model.parameters())
    size = PROBE_SIZE[opt["dataset"]]
    x = torch.zeros(2, 3, size, size, dtype=weight.dtype, device=weight.device)
    training = model.training
    model.eval()
    try:
        feats, _ = model.forward_stages(x, preact=False)
    finally:
        model.train(training)
    return feats


def pool_to_match(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """AT's, NST's and VID's size match: the larger map average-pooled to the smaller's height, squared."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


class FeatureMethod(Distiller):
    """One RepDistiller baseline: `distill_loss(feats_s, feats_t)` is its term; the rest is shared."""

    preact: ClassVar[bool] = False  # RepDistiller's `preact` for this method's feature lists

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        self.w_cls, self.w_kd, self.kd_T = opt["loss_cls"], opt["loss_kd"], opt["kd_T"]
        self.w_term = opt[f"loss_{self.name}"]

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        feats_s, logits = self.student.forward_stages(x, preact=self.preact)
        with torch.no_grad():
            feats_t, teacher_logits = self.teacher.forward_stages(x, preact=self.preact)
        out = ce_and_kd(logits, labels, teacher_logits, self.w_cls, self.w_kd, self.kd_T)
        term = self.distill_loss(feats_s, feats_t)
        out[f"loss_{self.name}"] = term
        out.update(loss=out["loss"] + term * self.w_term, logits=logits)
        return out
