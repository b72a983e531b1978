"""Similarity-preserving distillation (Tung & Mori, ICCV 2019) as RepDistiller computes it
(distiller_zoo/SP.py, helper/loops.py): on the last feature map before pooling (the feature list's
second-to-last entry), the batch's Gram matrices of the flattened maps, each row L2-normalised; the squared
difference summed and divided by batch^2. Weight `loss_similarity` (beta, 3000 in RepDistiller's scripts)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distiller.base import register
from distiller.feature_method import FeatureMethod
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, Field


def normalized_gram(f: Tensor) -> Tensor:
    f = f.flatten(1)
    return F.normalize(f @ f.t())


@register("similarity")
class Similarity(FeatureMethod):
    options = {**LOSS_CLS, **KD_OPTIONS, "loss_similarity": Field(3000.0, "float", *NONNEG)}

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        bsz = feats_s[-2].shape[0]
        diff = normalized_gram(feats_t[-2]) - normalized_gram(feats_s[-2])
        return (diff * diff).sum() / (bsz * bsz)
