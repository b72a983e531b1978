"""A group: the trials that train one epoch together, and what trains them (replicas, SGD, step, statistics)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from distiller import Distiller
from engine import parallel
from engine.data import TrainBatches
from engine.replicas import SingleTrial, StackedTrials
from engine.step import Speed, Step, build_optimizer, build_step
from utils.meter import DeviceMeter


@dataclass
class Group:
    trials: list[Any]  # engine.trainer.Trial
    replicas: SingleTrial | StackedTrials
    optimizer: torch.optim.Optimizer
    step: Step
    meter: DeviceMeter
    batches: TrainBatches


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
                  device: torch.device, train_batches: TrainBatches, distributed: bool = False
                  ) -> Callable[[list[Any]], Group]:
    """`build(members)` makes the group of those trials from the states they last saved (`trial.saved`): a
    run of one trial trains its method object itself (wrapped for torchrun), several are stacked."""
    numbers = [t.paths.number for t in all_trials]

    def build(members: list[Any]) -> Group:
        if len(all_trials) == 1:
            method = methods[0]
            replicas = SingleTrial(method, parallel.wrap(method, device) if distributed else None)
        else:
            replicas = StackedTrials(methods[0], [t.saved[0] for t in members], speed.channels_last)
        saved = [t.saved[1] for t in members] if members[0].saved[1] is not None else None
        optimizer, meter, step = train_parts(replicas, type(methods[0]), opt, speed, device, saved)
        batches = train_batches.subset([numbers.index(t.paths.number) for t in members])
        return Group(members, replicas, optimizer, step, meter, batches)
    return build
