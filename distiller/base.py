"""What every method shares, and the contract through which the engine knows a method.

As in mdistiller, `forward(*views, labels)` returns a dict: `loss` is the total to minimise, each `loss_<term>`
one of its terms, `logits` the student's logits for its first view; the trainer sums nothing. The teacher is
kept in eval mode here, in one place, whatever `train()` is asked.

A method is one file under distiller/ that subclasses `Distiller`, registers itself with `@register(name)`
and declares, as class attributes, everything the engine needs to know about it:

- `options`: its keys in the options file (a block such as `cocord:`, or top-level keys), as
  `options.schema.Field`s; `check_options` adds the rules between keys;
- `fixed_options`: the keys a resume must keep as they were (besides the models, data and batch size);
- `accuracy_outputs`: the accuracies it logs (`acc_train` -> `acc_train/top_1`, `acc_train/top_5`);
- `n_views`, `needs_teacher`, `min_batch`, and `experiment_name` (its folder under experiments/).

Logged terms follow one rule: every `loss_<term>` the method returns is logged as `loss_train/<term>`, and
`loss` as `loss_train/total`. What must stay identical across processes is `replicated_state()`, by
default everything the method checkpoints.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from options.schema import COMMON, OptionsError, merge_schemas
from utils.meter import Accuracy

METHODS: dict[str, type[Distiller]] = {}


def register(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: the method becomes `distill: <name>`."""
    def add(cls: type[Distiller]) -> type[Distiller]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = cls
        cls.name = name
        return cls
    return add


def method_class(name: str) -> type[Distiller]:
    try:
        return METHODS[name]
    except KeyError:
        raise OptionsError(f"option 'distill' must be one of {', '.join(sorted(METHODS))}, got {name!r}") from None


def option_schema() -> dict[str, Any]:
    """Every key an options file may hold: the common ones and every method's own."""
    return merge_schemas(COMMON, *(cls.options for cls in METHODS.values()))


class Distiller(nn.Module):
    name: ClassVar[str] = ""
    n_views: ClassVar[int] = 1          # augmented views of each image the method takes
    needs_teacher: ClassVar[bool] = True
    min_batch: ClassVar[int] = 1        # smaller batches cannot train it (BatchNorm1d needs 2); they are skipped
    options: ClassVar[dict[str, Any]] = {}
    fixed_options: ClassVar[tuple[str, ...]] = ()
    accuracy_outputs: ClassVar[dict[str, Accuracy]] = {"acc_train": Accuracy("logits")}
    side_stream: torch.cuda.Stream | None = None  # set by the engine on a GPU: a method may overlap work on it

    def __init__(self, student: nn.Module, teacher: nn.Module | None, opt: dict[str, Any]):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    @classmethod
    def check_options(cls, opt: dict[str, Any], world_size: int = 1) -> None:
        """Rules between keys, raised as OptionsError; `world_size` processes each take `batch_size`."""

    @classmethod
    def experiment_name(cls, opt: dict[str, Any]) -> str:
        raise NotImplementedError

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

    def replicated_state(self) -> dict[str, torch.Tensor]:
        """What every process of a torchrun job must hold identically (checked once per epoch)."""
        return self.checkpoint_state()

    def describe(self) -> list[str]:
        """Lines worth a log line once (e.g. a frozen teacher head)."""
        return []
