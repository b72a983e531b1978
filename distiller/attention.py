"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017) as RepDistiller
computes it (distiller_zoo/AT.py, helper/loops.py): for each stage feature (the feature list without its first
and last entries), the squared difference of the L2-normalised attention maps (mean over channels of f^2;
the larger map average-pooled to the smaller), mean over batch and positions, summed over the stages. Weight
`loss_attention` (beta, 1000 in RepDistiller's scripts)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distiller.base import register
from distiller.feature_method import FeatureMethod, pool_to_match
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, Field

P = 2  # RepDistiller's Attention(p=2)


def attention_map(f: Tensor) -> Tensor:
    return F.normalize(f.pow(P).mean(1).flatten(1))


@register("attention")
class Attention(FeatureMethod):
    options = {**LOSS_CLS, **KD_OPTIONS, "loss_attention": Field(1000.0, "float", *NONNEG)}

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        total = 0
        for f_s, f_t in zip(feats_s[1:-1], feats_t[1:-1]):
            f_s, f_t = pool_to_match(f_s, f_t)
            total = total + (attention_map(f_s) - attention_map(f_t)).pow(2).mean()
        return total
