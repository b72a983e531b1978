"""What every method shares: a student, an optional frozen teacher, a dict of losses per step.

As in mdistiller: `forward(*views, labels)` returns a dict whose `loss` is the total to minimise
(plus each term, and `logits` of the student for its first view); the trainer sums nothing.
The teacher is kept in eval mode here, in one place, whatever `train()` is asked.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

METHODS: dict[str, type[Distiller]] = {}


def register(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    def add(cls: type[Distiller]) -> type[Distiller]:
        METHODS[name] = cls
        cls.name = name
        return cls
    return add


def build_distiller(name: str, student: nn.Module, teacher: nn.Module | None, opt: dict[str, Any]) -> Distiller:
    if name not in METHODS:
        raise ValueError(f"unknown distill method '{name}'; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](student, teacher, opt)


class Distiller(nn.Module):
    name = "base"
    n_views = 1            # augmented views of each image the method takes
    needs_teacher = True
    # Scalars the trainer logs per epoch besides the loss terms: name -> output key with logits
    # whose correct class is `labels` (None: column 0, the contrastive positive).
    accuracy_outputs: dict[str, str | None] = {"acc_train": "logits"}

    def __init__(self, student: nn.Module, teacher: nn.Module | None, opt: dict[str, Any]):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_modules(self) -> list[nn.Module]:
        """The modules SGD trains (their parameters, in this order)."""
        return [self.student]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules() for p in m.parameters()]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Everything a resume needs; the teacher is left out (it is read from its own file)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit this method: missing {missing[:3]}, unexpected {unexpected[:3]}")

    @staticmethod
    def experiment_name(opt: dict[str, Any]) -> str:
        raise NotImplementedError

    def describe(self) -> list[str]:
        """Lines worth a log line once (e.g. a frozen teacher head)."""
        return []
