"""One training step, built once for the trainer and the bench scripts: eager, compiled, graphed, streams.

`train_step` is the only definition of a step: forward (everything a method updates in it included),
backward, SGD, statistics. `build_step` wraps it as the speed settings say; the `Step` it returns owns what
a learning-rate change needs (SGD bakes the float into a captured graph, so the graph is captured again).
A `Group` is the trials that train one epoch together, with what trains them (replicas, SGD, step, statistics).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from distiller import Distiller
from engine.machine import Speed, wrap_ddp
from engine.replicas import SingleTrial, StackedTrials
from utils.meter import DeviceMeter


def build_optimizer(params: list[torch.Tensor], opt: dict[str, Any], lr: float | None = None) -> torch.optim.SGD:
    """SGD over what a method trains (weight decay on every trained tensor, BatchNorm and biases included), at
    the options' learning rate unless `lr` is given (an init stage's)."""
    return torch.optim.SGD(params, lr=opt["learning_rate"] if lr is None else lr, momentum=opt["momentum"],
                           weight_decay=opt["weight_decay"])


def lr_at(epoch: int, opt: dict[str, Any]) -> float:
    """Step schedule: the base lr times rate^(decay epochs strictly below this 1-based epoch)."""
    n = sum(epoch > e for e in opt["lr_decay_epochs"])
    return opt["learning_rate"] * opt["lr_decay_rate"] ** n


def train_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, views: list[torch.Tensor],
               labels: torch.Tensor, index: torch.Tensor | None = None, meter: DeviceMeter | None = None,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
               ) -> dict[str, torch.Tensor]:
    """One SGD step on a batch (`index`: each sample's training-set index, for a method that needs it)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        out = module(*views, labels) if index is None else module(*views, labels, index)
    out["loss"].sum().backward()  # one trial: a scalar; several: their sum, whose gradient is each trial's own
    optimizer.step()
    if meter is not None:
        meter.update(out, labels)
    return out


StepFn = Callable[[list[torch.Tensor], torch.Tensor, "torch.Tensor | None"], object]


class GraphedStep:
    """Calls `step(views, labels, index)`; full batches go through one captured CUDA graph, the smaller last
    batch of an epoch runs eagerly."""

    def __init__(self, step: StepFn, full_batch: int, warmup_steps: int = 3):
        self.step, self.full_batch, self.warmup_left = step, full_batch, warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None] | None = None

    def __call__(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor | None = None) -> None:
        if labels.shape[-1] != self.full_batch:
            self.step(views, labels, index)
            return
        if self.warmup_left > 0:
            # Real training steps, on a side stream as capture requires (lazy init, cuDNN choices).
            self.warmup_left -= 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.step(views, labels, index)
            torch.cuda.current_stream().wait_stream(stream)
            return
        if self.static is None:
            self.static = ([v.clone() for v in views], labels.clone(), None if index is None else index.clone())
        else:
            for dst, src in zip([*self.static[0], self.static[1], self.static[2]], [*views, labels, index]):
                if dst is not None:
                    dst.copy_(src)
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records only: the replay below performs this batch's step
                self.step(*self.static)
            self.graph = graph
        self.graph.replay()


class Step:
    """`step(views, labels, index)` trains on one batch (index: for a method that needs it, else None);
    `set_lr(lr)` before an epoch."""

    def __init__(self, run: StepFn, optimizer: torch.optim.Optimizer, graphed: GraphedStep | None):
        self._run, self.optimizer, self.graphed = run, optimizer, graphed

    def __call__(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor | None = None) -> None:
        self._run(views, labels, index)

    def set_lr(self, lr: float) -> None:
        changed = any(group["lr"] != lr for group in self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if changed and self.graphed is not None:
            self.graphed.graph = None  # the next full batch captures anew


def build_step(replicas: SingleTrial | StackedTrials, optimizer: torch.optim.Optimizer, meter: DeviceMeter | None,
               speed: Speed, device: torch.device, full_batch: int) -> Step:
    if speed.compile:
        from torch import _dynamo
        # The zoo's networks share one forward: every part, mode and batch size is a recompilation of it.
        _dynamo.config.recompile_limit = max(_dynamo.config.recompile_limit, 64)
        replicas.compile()
    replicas.set_side_stream(torch.cuda.Stream(device) if speed.streams else None)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)) if speed.amp \
        else contextlib.nullcontext
    module = replicas.module if isinstance(replicas, SingleTrial) else replicas

    def run(views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor | None = None) -> None:
        train_step(module, optimizer, views, labels, index, meter, autocast)
    graphed = GraphedStep(run, full_batch) if speed.cuda_graph else None
    return Step(graphed or run, optimizer, graphed)


class _InitForward(torch.nn.Module):
    """A method's init stage as a module (so that torchrun's DDP can wrap it)."""

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.method = method

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.method.init_forward(*args)


class InitStep:
    """One step of a method's init stage: SGD at its init learning rate over its init modules, on the first view;
    the modes are the method's `init_train()`, set by `start_epoch` (an evaluation may have reset them)."""

    def __init__(self, method: Any, opt: dict[str, Any], distributed: bool, device: torch.device):
        self.method = method
        method.init_train()  # before DDP sees which parameters train
        params = [p for m in method.init_modules() for p in m.parameters()]
        self.optimizer = build_optimizer(params, opt, lr=type(method).init_learning_rate(opt))
        module = _InitForward(method)
        self.module = wrap_ddp(module, device) if distributed else module

    def start_epoch(self) -> None:
        self.method.init_train()

    def __call__(self, views: list[torch.Tensor], labels: torch.Tensor, index: torch.Tensor | None
                 ) -> dict[str, torch.Tensor]:
        return train_step(self.module, self.optimizer, views[:1], labels, index)


@dataclass
class Group:
    """The trials that train one epoch together, and what trains them (replicas, SGD, step, statistics)."""
    trials: list[Any]  # engine.checkpoint.Trial
    replicas: SingleTrial | StackedTrials
    optimizer: torch.optim.Optimizer
    step: Step
    meter: DeviceMeter
    batches: Any  # engine.data.TrainBatches


def train_parts(replicas: SingleTrial | StackedTrials, method_cls: type[Distiller], opt: dict[str, Any],
                speed: Speed, device: torch.device, optimizer_states: list[dict[str, Any]] | None = None
                ) -> tuple[torch.optim.Optimizer, DeviceMeter, Step]:
    """SGD over what `replicas` train (from the trials' saved optimizer states, if any), the statistics, and the
    step the speed settings make: for the trainer here and for the bench scripts."""
    optimizer = build_optimizer(replicas.trained_parameters(), opt)
    if optimizer_states is not None:
        replicas.load_optimizer_states(optimizer, optimizer_states)
    meter = DeviceMeter(method_cls.accuracy_outputs, device, replicas.n)
    return optimizer, meter, build_step(replicas, optimizer, meter, speed, device, opt["batch_size"])


def group_builder(methods: list[Distiller], all_trials: list[Any], opt: dict[str, Any], speed: Speed,
                  device: torch.device, train_batches: Any, distributed: bool = False
                  ) -> Callable[[list[Any]], Group]:
    """`build(members)` makes the group of those trials from the states they last saved (`trial.saved`): a
    run of one trial trains its method object itself (wrapped for torchrun), several are stacked.
    `train_batches`: every trial's training batches (engine.data.TrainBatches)."""
    numbers = [t.paths.number for t in all_trials]

    def build(members: list[Any]) -> Group:
        if len(all_trials) == 1:
            method = methods[0]
            replicas = SingleTrial(method, wrap_ddp(method, device) if distributed else None)
        else:
            replicas = StackedTrials(methods[0], [t.saved[0] for t in members], speed.channels_last)
        saved = [t.saved[1] for t in members] if members[0].saved[1] is not None else None
        optimizer, meter, step = train_parts(replicas, type(methods[0]), opt, speed, device, saved)
        batches = train_batches.subset([numbers.index(t.paths.number) for t in members])
        return Group(members, replicas, optimizer, step, meter, batches)
    return build
