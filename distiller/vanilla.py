"""`distill: none`: plain supervised training (teachers, and the 'student' baselines of the tables)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from distiller.base import Distiller, register


@register("none")
class Vanilla(Distiller):
    n_views = 1
    needs_teacher = False

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.student(x)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "loss_cls": loss, "logits": logits}

    @classmethod
    def experiment_name(cls, opt: dict[str, Any]) -> str:
        # CRD's teacher folders are `<arch>_vanilla`; fetch and train leave teachers in the same shape.
        return f"{opt['student_model']}_{opt['dataset']}_vanilla"
