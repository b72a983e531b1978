"""torchrun support on torch.distributed's own pieces (DDP), nothing of our own.

DDP wraps the whole method: it all-reduces the gradients of what SGD trains (the student, its head,
the predictor) and leaves the frozen parts alone. Everything else stays identical across ranks because
every rank starts from the same generator state and applies the same updates: the moving averages
read the (synchronised) student, the queue gathers every rank's keys in rank order, and once per epoch
BatchNorm running statistics are taken from rank 0.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from utils.meter import DeviceMeter


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(opt: dict[str, Any]) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes in the environment."""
    if not is_distributed():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> None:
    dist.all_reduce(t)


def share_seed(opt: dict[str, Any]) -> None:
    """Give every rank rank 0's random state, so that models, heads and queue start identical."""
    if not dist.is_initialized():
        return
    seed = torch.tensor([opt["seed"] if opt["seed"] is not None else int(torch.randint(0, 2**62, ()).item())])
    dist.broadcast(seed, src=0)
    torch.manual_seed(int(seed))


def wrap(method: nn.Module, opt: dict[str, Any], device: torch.device
         ) -> tuple[nn.Module | None, Callable[[DeviceMeter], dict[str, Any]] | None]:
    """(the module to call in the step, the epoch-end synchronisation), or (None, None) alone."""
    if not dist.is_initialized():
        return None, None
    # Buffers are not broadcast at each forward: every rank's BatchNorm sees its own batch (SPEC maths).
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
               inspect.signature(nn.parallel.DistributedDataParallel).parameters else {"broadcast_buffers": False})
    ddp = nn.parallel.DistributedDataParallel(
        method, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)

    def sync(meter: DeviceMeter) -> dict[str, Any]:
        for t in (meter.loss_sums, meter.hits, meter.count):
            dist.all_reduce(t)
        dist.all_reduce(meter.first_bad_step, op=dist.ReduceOp.MAX)
        for module in method.modules():  # BatchNorm statistics saw each rank's own batches
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)
        check_identical(method)
        return meter.read()
    return ddp, sync


@torch.no_grad()
def check_identical(method: nn.Module) -> None:
    """Every rank must hold the same modules and queue; a cheap fingerprint per part, compared."""
    state = method.replicated_state()
    names = list(state)
    mine = torch.stack([_fingerprint(state[n]) for n in names]).to(next(method.parameters()).device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    for rank, theirs in enumerate(every):
        differs = [n for n, a, b in zip(names, mine.tolist(), theirs.tolist()) if a != b]
        if differs:
            raise RuntimeError(f"ranks diverged: {', '.join(differs)} differ between this rank and rank {rank}")


def _fingerprint(t: torch.Tensor) -> torch.Tensor:
    return (t.double() * (1 + torch.arange(t.numel(), device=t.device).view(t.shape) % 7)).sum()

