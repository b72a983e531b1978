"""The trained side of a run: one trial's method, or several trials trained as one.

Several trials of a pair train together with the trials as a batch dimension: their states (parameters and
every buffer included) are stacked, and one `torch.func.vmap` of the method's own forward runs them all, so there
is one definition of the step. The teacher is shared, frozen, and sees each trial's own views; everything else stays
per trial. A convolution whose weights differ per trial becomes one grouped convolution, a linear layer one batched
matmul: bigger kernels, fewer of them.

Both kinds answer the same questions, so the trainer never asks which it has: what SGD trains, what trial k
checkpoints (in exactly a single run's format), and what the students predict. Also here: the test of one
network or of every trial's student (loss, top-1, top-5), in eval mode.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from distiller import Distiller
from engine.machine import sync_epoch
from utils import distributed
from utils.meter import DeviceMeter, topk_hits

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class SingleTrial:
    """One method object (or its DDP wrapper, which `module` then is)."""

    n = 1

    def __init__(self, method: Distiller, ddp: nn.Module | None = None):
        self.method, self.module, self.ddp = method, ddp or method, ddp is not None

    def end_epoch(self, meter: DeviceMeter) -> None:
        """Under torchrun: statistics and BatchNorm buffers agreed across processes, which are then compared."""
        if self.ddp:
            sync_epoch(self.method, meter)

    def trained_parameters(self) -> list[torch.Tensor]:
        return self.method.trainable_parameters()

    def train(self, mode: bool = True) -> SingleTrial:
        self.method.train(mode)
        return self

    def start_epoch(self, epoch: int) -> None:
        self.method.start_epoch(epoch)

    def compile(self) -> None:
        # Each part on its own: the method's forward stays eager, so its side stream can overlap them.
        for child in self.method.children():
            child.compile(dynamic=False)

    def set_side_stream(self, stream: torch.cuda.Stream | None) -> None:
        self.method.side_stream = stream

    def trial_state(self, k: int) -> dict[str, torch.Tensor]:
        return self.method.checkpoint_state()

    def student_state(self, k: int) -> dict[str, torch.Tensor]:
        return self.method.student.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_states(self, optimizer: torch.optim.Optimizer, states: list[dict[str, Any]]) -> None:
        optimizer.load_state_dict(states[0])

    def students(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Test logits, [1, B, classes], in eval mode."""
        student = self.method.student
        return in_eval_mode(student, lambda images: student(images).unsqueeze(0))


class StackedTrials(nn.Module):
    """N trials of one method as one module: `forward(*views, labels)` takes and returns tensors with a leading
    trial dimension. `skeleton` (trial 0's method object) lends its structure and the shared teacher."""

    def __init__(self, skeleton: Distiller, states: list[dict[str, torch.Tensor]], channels_last: bool = False):
        super().__init__()
        self.n = len(states)
        object.__setattr__(self, "skeleton", skeleton)  # not a submodule: its own per-trial tensors are unused
        names = {id(p): n for n, p in skeleton.named_parameters()}
        self.trained = [names[id(p)] for p in skeleton.trainable_parameters()]  # a single run's optimizer order
        self.state: dict[str, torch.Tensor] = {}
        for name in states[0]:
            stacked = torch.stack([s[name].detach() for s in states])
            if channels_last and stacked.dim() == 5:  # each trial's conv weight a channels_last slice
                stacked = stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
            self.state[name] = nn.Parameter(stacked) if name in self.trained else stacked
        self._step = vmap(self._one_trial, randomness="error")

    @classmethod
    def from_methods(cls, methods: list[Distiller], channels_last: bool = False) -> StackedTrials:
        return cls(methods[0], [m.checkpoint_state() for m in methods], channels_last)

    def _one_trial(self, state: dict[str, torch.Tensor], *args: torch.Tensor) -> dict[str, torch.Tensor]:
        return functional_call(self.skeleton, state, args, strict=False, tie_weights=False)

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._step(self.state, *args)

    def end_epoch(self, meter: DeviceMeter) -> None:
        """Nothing to agree on: several trials run in one process."""

    def train(self, mode: bool = True) -> StackedTrials:
        self.skeleton.train(mode)
        return super().train(mode)

    def start_epoch(self, epoch: int) -> None:
        self.skeleton.start_epoch(epoch)  # what it writes is shared by the trials (none of their stacked state)

    def trained_parameters(self) -> list[torch.Tensor]:  # what SGD trains, in a single run's order
        return [self.state[n] for n in self.trained]

    def set_side_stream(self, stream: torch.cuda.Stream | None) -> None:
        self.skeleton.side_stream = None  # the trials' batch dimension already fills the kernels

    def trial_state(self, k: int) -> dict[str, torch.Tensor]:
        return {name: t[k].detach().clone(memory_format=torch.contiguous_format) for name, t in self.state.items()}

    def student_state(self, k: int) -> dict[str, torch.Tensor]:
        return {name.removeprefix("student."): t for name, t in self.trial_state(k).items()
                if name.startswith("student.")}

    def optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        """Trial k's part, as a single run's SGD would save it."""
        full = optimizer.state_dict()
        state = {i: {key: v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v for key, v in s.items()}
                 for i, s in full["state"].items()}
        return {"state": state, "param_groups": full["param_groups"]}

    def load_optimizer_states(self, optimizer: torch.optim.Optimizer, states: list[dict[str, Any]]) -> None:
        first = states[0]
        stacked = {i: {key: torch.stack([s["state"][i][key] for s in states]) if torch.is_tensor(v) and v.dim() > 0
                       else v for key, v in entry.items()} for i, entry in first["state"].items()}
        optimizer.load_state_dict({"state": stacked, "param_groups": first["param_groups"]})

    def students(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Test logits of every trial's student, [N, B, classes], in eval mode."""
        student = self.skeleton.student
        weights = {name.removeprefix("student."): t for name, t in self.state.items() if name.startswith("student.")}
        each = vmap(lambda w, images: functional_call(student, w, (images,), tie_weights=False), in_dims=(0, None))
        return in_eval_mode(student, lambda images: each(weights, images))


def in_eval_mode(module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`fn` run with `module` in eval mode, its mode restored after."""
    def run(images: torch.Tensor) -> torch.Tensor:
        was = module.training
        module.eval()
        try:
            return fn(images)
        finally:
            module.train(was)
    return run


@torch.no_grad()
def evaluate_trials(logits_of: Callable[[torch.Tensor], torch.Tensor], batches: Batches) -> list[dict[str, float]]:
    """Per trial: loss and top-1/top-5 (%), from `logits_of(images)` shaped [trials, B, classes]; one host
    read at the end (the totals summed across processes when each saw a shard of the test set)."""
    totals = None
    for images, labels in batches:
        logits = logits_of(images)
        n, batch = logits.shape[0], labels.shape[0]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.repeat(n), reduction="none").view(n, batch)
        hits = topk_hits(logits, labels.expand(n, batch))
        count = torch.full((n, 1), batch, dtype=torch.float64, device=labels.device)
        step = torch.cat([loss.double().sum(1, keepdim=True), hits.double(), count], dim=1)
        totals = step if totals is None else totals + step
    if totals is None:
        raise ValueError("the test set is empty")
    if getattr(batches, "sharded", False):
        distributed.all_reduce_sum(totals)
    return [{"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}
            for loss, top1, top5, count in totals.tolist()]


def evaluate(model: torch.nn.Module, batches: Batches) -> dict[str, Any]:
    """One network's test loss and accuracy, in eval mode."""
    return evaluate_trials(in_eval_mode(model, lambda images: model(images).unsqueeze(0)), batches)[0]
