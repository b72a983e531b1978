"""Process-group helpers for torchrun jobs; each one is a no-op in a single process."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes in the environment."""
    if not is_distributed():
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> None:
    if active():
        dist.all_reduce(t)


def gather_in_rank_order(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x`, concatenated in rank order (as MoCo gathers its keys); `x` alone otherwise."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def broadcast_int(value: int) -> int:
    """Rank 0's `value` on every rank."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return int(t)
