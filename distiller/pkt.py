"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) as RepDistiller computes it
(distiller_zoo/PKT.py, helper/loops.py): on the pooled features, each side's cosine similarities scaled to
[0, 1] and normalised per row into conditional probabilities; the term is the mean over all entries of
p_t log((p_t + eps) / (p_s + eps)). Weight `loss_pkt` (beta, 30000 in RepDistiller's scripts).

RepDistiller zeroes NaN entries of the normalised features with a masked in-place write, which reads values
on the host; `torch.where` on the same mask computes the same without it."""
from __future__ import annotations

import torch
from torch import Tensor

from distiller.base import register
from distiller.feature_method import FeatureMethod
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, Field

EPS = 1e-7


def conditional_probabilities(f: Tensor) -> Tensor:
    f = f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + EPS)
    f = torch.where(f != f, 0.0, f)
    similarity = (f @ f.t() + 1.0) / 2.0
    return similarity / torch.sum(similarity, dim=1, keepdim=True)


@register("pkt")
class PKT(FeatureMethod):
    options = {**LOSS_CLS, **KD_OPTIONS, "loss_pkt": Field(30000.0, "float", *NONNEG)}

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        model_p, target_p = conditional_probabilities(feats_s[-1]), conditional_probabilities(feats_t[-1])
        return torch.mean(target_p * torch.log((target_p + EPS) / (model_p + EPS)))
