"""A training step never waits on the device: no value is read back to Python and no tensor is made from
Python data inside it.

On a GPU either would stall the queue of kernels every step, and a CUDA graph cannot capture it at all. The
GPU check (`torch.cuda.set_sync_debug_mode`) needs a GPU; this one runs anywhere: a dispatch mode sees every
operator the step runs (after vmap has batched them, so a batching rule that reads a value is caught too) and
fails on the ones that read a tensor's value on the host or copy Python data in.
"""
import sys

import pytest
import torch
from conftest import ROOT
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402

from engine.machine import Speed  # noqa: E402

READS = {"aten._local_scalar_dense.default",  # .item(), float(t), bool(t)
         "aten.is_nonzero.default",
         "aten.nonzero.default",  # output size depends on the values
         "aten.masked_select.default",
         "aten.lift_fresh.default"}  # torch.tensor(python data): a host-to-device copy on a GPU


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in READS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _steps(trials: int, loss_kd: float) -> list[str]:
    """An epoch of `trials` trials, batches from the on-device loader; what it read."""
    device, speed = torch.device("cpu"), Speed(loader="gpu", channels_last=True)
    opt = harness.options("resnet14:resnet8", 8, {**harness.SMALL_HEADS, "key_size": 16}, loss_kd=loss_kd)
    methods = harness.make_methods(opt, trials, device)
    _, _, _, step = harness.make_step(methods, opt, speed, device)
    batches = harness.make_batches(harness.random_arrays(64), trials, speed, device, 8, 0)
    step(*next(iter(batches))[:2])  # lazy initialisation may read once
    with HostReads() as reads:  # a whole epoch, its start (shuffle, augmentation) included
        for views, labels, _ in batches:
            step(views, labels)
    return reads.seen


@pytest.mark.parametrize("trials,loss_kd", [(1, 0.0), (1, 1.0), (3, 1.0)])
def test_a_training_step_reads_nothing_back(trials, loss_kd):
    assert _steps(trials, loss_kd) == []


def test_the_probe_sees_a_read():
    """The check can fail: a step's `.item()`, and a tensor made from a list, are both caught."""
    with HostReads() as reads:
        t = torch.ones(3)
        t.sum().item()
        torch.tensor([1.0, 2.0])
    assert reads.seen == ["aten._local_scalar_dense.default", "aten.lift_fresh.default"]
