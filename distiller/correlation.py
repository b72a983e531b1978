"""Correlation congruence (Peng et al., ICCV 2019) as RepDistiller computes it (distiller_zoo/CC.py,
models/util.py's LinearEmbed, helper/loops.py): the student's and the teacher's pooled features each mapped
to `feat_dim` by its own trained linear layer (embed_s, embed_t), then, with d = |e_s - e_t|, the mean over
consecutive samples i of sum(d_i * d_(i+1)). Weight `loss_correlation` (beta, 0.02 in RepDistiller's
scripts)."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from distiller.base import register
from distiller.feature_method import FeatureMethod
from distiller.kd import KD_OPTIONS, LOSS_CLS
from options.schema import NONNEG, POS, Field


class LinearEmbed(nn.Module):
    """RepDistiller's LinearEmbed: flatten, then one linear layer."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


@register("correlation")
class Correlation(FeatureMethod):
    min_batch = 2  # one sample has no pairs: the term would be NaN (a mean over none)
    options = {
        **LOSS_CLS,
        **KD_OPTIONS,
        "loss_correlation": Field(0.02, "float", *NONNEG),
        "correlation": {"feat_dim": Field(128, "int", *POS)},
    }

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        feat_dim = opt["correlation"]["feat_dim"]
        self.embed_s = LinearEmbed(student.feature_dim, feat_dim)
        self.embed_t = LinearEmbed(teacher.feature_dim, feat_dim)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.embed_s, self.embed_t]

    def distill_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        delta = (self.embed_s(feats_s[-1]) - self.embed_t(feats_t[-1])).abs()
        return (delta[:-1] * delta[1:]).sum(1).mean()
