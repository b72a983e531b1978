"""What RepDistiller's two-stage methods (abound, factor, fsp) share: an init stage, then the main stage.

RepDistiller's helper/pretrain.py `init`: for `init_epochs` epochs (default 30), SGD (the run's momentum and
weight decay) trains only the init modules on the init loss, with the student in eval mode but for the init
modules (`model_s.eval()`, then `init_modules.train()`) and the teacher in eval mode. The main stage then trains
the student (and what the method adds) on train_student.py's loss, its frozen modules in eval mode.

Not stackable: the init stage trains other modules than the main stage, with an optimizer of its own.

`requires_grad` follows the stage, so that nothing outside what the stage trains asks for a gradient (as DDP
requires): `init_train()` leaves it on exactly the init modules' parameters, `train()` exactly on the main
stage's. Call `init_train()` before each init epoch (an evaluation resets the student's modes).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from distiller.base import Distiller
from distiller.feature_method import probe_features
from options.schema import NONNEG, Field

INIT_OPTIONS = {"init_epochs": Field(30, "int", *NONNEG)}  # RepDistiller's --init_epochs


def stage_shapes(model: nn.Module, opt: dict[str, Any]) -> list[torch.Size]:
    """The shapes of `model.forward_stages`' entries, from RepDistiller's probe batch (feature_method.py)."""
    return [f.shape for f in probe_features(model, opt)]


def train_only(method: nn.Module, modules: list[nn.Module]) -> None:
    """requires_grad on exactly the parameters of `modules`."""
    method.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)


class TwoStage(Distiller):
    """A RepDistiller two-stage method: `init_epochs` in its options block, `init_modules` and `init_forward`."""

    stackable: ClassVar[bool] = False  # the init stage trains other modules with another optimizer

    @classmethod
    def init_epochs(cls, opt: dict[str, Any]) -> int:
        return opt[cls.name]["init_epochs"]

    def init_train(self) -> None:
        super().init_train()
        train_only(self, self.init_modules())

    def train(self, mode: bool = True) -> TwoStage:
        super().train(mode)
        if mode:
            train_only(self, self.trainable_modules())
        return self
