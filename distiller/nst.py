"""Neuron selectivity transfer (Huang & Wang, "Like What You Like", 2017) as RepDistiller computes it
(distiller_zoo/NST.py, helper/loops.py): for each stage feature (the feature list without its first and last
entries; the larger map average-pooled to the smaller), each channel's map flattened and L2-normalised; the
squared maximum mean discrepancy with the polynomial kernel k(a, b) = (a . b)^2, i.e. mean k(t, t) (without
gradient) + mean k(s, s) - 2 mean k(s, t) over the batch and channel pairs, summed over the stages. Weight
`loss_nst` (beta, 50 in RepDistiller's scripts).

RepDistiller forms the kernel as a broadcast product summed over positions (a batch x C x C x positions
tensor); here it is the same sum as one batched matrix product, which needs no such tensor."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distiller.base import register
from distiller.feature_method import FeatureMethod, pool_to_match
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, Field


def poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    """(N, C_b, C_a): entry [n, i, j] = (b[n, i] . a[n, j])^2, RepDistiller's poly_kernel(a, b)."""
    return (b @ a.transpose(1, 2)).pow(2)


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    f_s, f_t = pool_to_match(f_s, f_t)
    f_s = F.normalize(f_s.flatten(2), dim=2)
    f_t = F.normalize(f_t.flatten(2), dim=2)
    return poly_kernel(f_t, f_t).mean().detach() + poly_kernel(f_s, f_s).mean() - 2 * poly_kernel(f_s, f_t).mean()


@register("nst")
class NST(FeatureMethod):
    options = {**LOSS_CLS, **KD_OPTIONS, "loss_nst": Field(50.0, "float", *NONNEG)}

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        total = 0
        for f_s, f_t in zip(feats_s[1:-1], feats_t[1:-1]):
            total = total + nst_loss(f_s, f_t)
        return total
