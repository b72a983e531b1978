"""torchrun support on torch.distributed's own pieces (DDP), nothing of our own.

DDP wraps the whole method: it all-reduces the gradients of what SGD trains and leaves the frozen parts alone.
Everything else stays identical across ranks because every rank starts from the same seed and applies the same
updates (a method that gathers across ranks does so in rank order), and once per epoch BatchNorm running
statistics are taken from rank 0. The method's `replicated_state()` is then compared across ranks, so a
divergence is caught at once.
"""
from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import nn

from distiller import Distiller
from utils.fingerprint import fingerprint
from utils.meter import DeviceMeter


def wrap(method: Distiller, device: torch.device) -> nn.Module:
    # Buffers are not broadcast at each forward: every rank's BatchNorm sees its own batch, as in one process.
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(nn.parallel.DistributedDataParallel).parameters else {"broadcast_buffers": False})
    return nn.parallel.DistributedDataParallel(
        method, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def sync_epoch(method: Distiller, meter: DeviceMeter) -> None:
    """The end of an epoch: statistics summed over ranks, BatchNorm statistics from rank 0, ranks compared."""
    for t in (meter.loss_sums, meter.hits, meter.count):
        dist.all_reduce(t)
    dist.all_reduce(meter.first_bad_step, op=dist.ReduceOp.MAX)
    for module in method.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)
    check_identical(method)


@torch.no_grad()
def check_identical(method: Distiller) -> None:
    """Every rank must hold the same replicated state; a cheap fingerprint per entry, compared."""
    state = method.replicated_state()
    names = list(state)
    mine = torch.stack([fingerprint(state[n]) for n in names]).to(next(method.parameters()).device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    for rank, theirs in enumerate(every):
        differs = [n for n, a, b in zip(names, mine.tolist(), theirs.tolist()) if a != b]
        if differs:
            raise RuntimeError(f"ranks diverged: {', '.join(differs[:5])} differ between this rank and rank {rank}")

