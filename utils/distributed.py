"""Process-group helpers for torchrun jobs; each one is a no-op in a single process."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


class StoppedElsewhere(RuntimeError):
    """Another process of this torchrun group refused the run and said why; this one stops without a word."""


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


def _collective_device() -> torch.device:
    """Where the tensors of a collective live: NCCL reduces only GPU tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_int(value: int) -> int:
    """Rank 0's `value` on every rank."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.broadcast(t, src=0)
    return int(t)


@contextmanager
def agreed(errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """The block either passes on every process of a torchrun group or stops them all: a process that raises one
    of `errors` in it raises it after the block, and the others raise StoppedElsewhere, instead of waiting for it
    in their next collective (and failing there with a lost connection). Where several raise, rank 0's error is
    the one told. Every rank must enter the block; in a single process it changes nothing."""
    error: BaseException | None = None
    try:
        yield
    except errors as err:
        if not active():
            raise
        error = err
    if not active():
        return
    failed = torch.tensor([error is not None, error is not None and dist.get_rank() == 0], dtype=torch.int64,
                          device=_collective_device())
    dist.all_reduce(failed)
    if error is not None and (dist.get_rank() == 0 or not failed[1]):
        error.stopped_together = True  # type: ignore[union-attr]
        raise error
    if failed[0]:
        stop = StoppedElsewhere("another process of this run stopped it")
        stop.stopped_together = True
        raise stop


def settle(error: BaseException) -> None:
    """After a stop `agreed` made every process take, once this one has said why: each waits for the others,
    since torchrun ends them all as soon as one exits, perhaps before the one that explains has spoken."""
    if getattr(error, "stopped_together", False) and active():
        dist.barrier()
