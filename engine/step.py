"""One training step, and the same step captured whole in a CUDA graph.

`train_step` is the only definition of a step: forward (the method's moving averages and enqueue
included), backward, SGD, statistics. `GraphedStep` replays it for full batches; it re-captures when the
learning rate changes (SGD bakes the float into its kernels) and runs the smaller last batch eagerly.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from distiller import Distiller
from utils.meter import DeviceMeter


def build_optimizer(method: Distiller, opt: dict) -> torch.optim.SGD:
    return torch.optim.SGD(method.trainable_parameters(), lr=opt["learning_rate"], momentum=opt["momentum"],
                           weight_decay=opt["weight_decay"])


def lr_at(epoch: int, opt: dict) -> float:
    """Step schedule: the base lr times rate^(decay epochs strictly below this 1-based epoch)."""
    n = sum(epoch > e for e in opt["lr_decay_epochs"])
    return opt["learning_rate"] * opt["lr_decay_rate"] ** n


def train_step(method: torch.nn.Module, optimizer: torch.optim.Optimizer, views: list[torch.Tensor],
               labels: torch.Tensor, meter: DeviceMeter | None = None,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
               ) -> dict[str, torch.Tensor]:
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        out = method(*views, labels)
    out["loss"].backward()
    optimizer.step()
    if meter is not None:
        meter.update(out, labels)
    return out


def compile_method(method: torch.nn.Module) -> None:
    """torch.compile each part of the method, with static shapes (the smaller last batch gets a graph of
    its own rather than turning every later call into slower dynamic-shape code)."""
    import torch._dynamo
    # The zoo's networks share one forward: every part, mode and batch size is a recompilation of it.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for module in method.children():
        module.compile(dynamic=False)


class GraphedStep:
    """Calls `step(views, labels)`; full batches go through one captured CUDA graph."""

    def __init__(self, step: Callable[[list[torch.Tensor], torch.Tensor], object], full_batch: int,
                 warmup_steps: int = 3):
        self.step = step
        self.full_batch = full_batch
        self.warmup_left = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[list[torch.Tensor], torch.Tensor] | None = None

    def invalidate(self) -> None:
        """Forget the graph (after a learning-rate change); the next full batch captures anew."""
        self.graph = None

    def __call__(self, views: list[torch.Tensor], labels: torch.Tensor) -> None:
        if labels.shape[0] != self.full_batch:
            self.step(views, labels)
            return
        if self.warmup_left > 0:
            # Real training steps, on a side stream as capture requires (lazy init, cuDNN choices).
            self.warmup_left -= 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.step(views, labels)
            torch.cuda.current_stream().wait_stream(stream)
            return
        if self.static is None:
            self.static = ([v.clone() for v in views], labels.clone())
        else:
            for dst, src in zip(self.static[0], views):
                dst.copy_(src)
            self.static[1].copy_(labels)
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records only: the replay below performs this batch's step
                self.step(*self.static)
            self.graph = graph
        self.graph.replay()
