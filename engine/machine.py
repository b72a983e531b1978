"""The machine a run uses: its device, the speed settings that apply there, whether the state fits, and torchrun.

torchrun runs on torch.distributed's own pieces (DDP), nothing of our own. DDP wraps the whole method: it
all-reduces the gradients of what SGD trains and leaves the frozen parts alone. Everything else stays identical
across ranks because every rank starts from the same seed and applies the same updates (a method that gathers
across ranks does so in rank order), and once per epoch BatchNorm running statistics are taken from rank 0. The
method's `replicated_state()` is then compared across ranks, so a divergence is caught at once.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distiller import Distiller
from models import build_model
from options.schema import OptionsError
from utils import distributed
from utils.meter import DeviceMeter


def select_device(opt: dict[str, Any], say: Callable[[str], None]) -> torch.device:
    """The GPU `gpu` names, made the current one (streams and graph capture synchronise with the current
    device's stream), or the CPU."""
    if distributed.is_distributed() and torch.cuda.is_available():
        device = torch.device("cuda", distributed.local_rank())
    elif opt["gpu"] is None:
        return torch.device("cpu")
    elif not torch.cuda.is_available():
        say("warning: no CUDA GPU found; training on the CPU (slow; set gpu: null to silence this)")
        return torch.device("cpu")
    elif opt["gpu"] >= torch.cuda.device_count():
        raise OptionsError(f"option 'gpu' is {opt['gpu']} but this machine has {torch.cuda.device_count()} GPU(s)")
    else:
        device = torch.device("cuda", opt["gpu"])
    torch.cuda.set_device(device)
    return device


def set_cudnn(seed: int | None, device: torch.device) -> None:
    """A run with a seed is repeatable (deterministic cuDNN algorithms); one without picks the fastest."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = seed is not None
        torch.backends.cudnn.benchmark = seed is None


@dataclass(frozen=True)
class Speed:
    """The speed settings a run really uses (the options ask; the machine and the run decide)."""
    loader: str = "torchvision"  # gpu | torchvision
    cuda_graph: bool = False
    compile: bool = False
    channels_last: bool = False
    streams: bool = False
    amp: bool = False  # bf16 autocast: changes the maths

    def as_options(self) -> dict[str, Any]:
        return asdict(self)


def effective_speed(opt: dict[str, Any], device: torch.device, trials: int, world: int) -> Speed:
    """The fast path applies on a GPU; on the CPU the published eager path, but for a loader asked for by name."""
    s, gpu = opt["speed"], device.type == "cuda"
    loader = "gpu" if s["loader"] == "gpu" or (s["loader"] == "auto" and gpu) else "torchvision"
    if opt["dataset"] != "cifar100":
        loader = "torchvision"
    return Speed(loader=loader, cuda_graph=gpu and s["cuda_graph"] and world == 1, compile=gpu and s["compile"],
                 channels_last=gpu and s["channels_last"], streams=gpu and s["streams"] and trials == 1,
                 amp=gpu and s["amp"])


def effective_workers(opt: dict[str, Any], say: Callable[[str], None]) -> int:
    """On the CPU, no more loader workers than cores (more only compete with the training itself)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if opt["num_workers"] > cores:
        say(f"note: num_workers {opt['num_workers']} is more than this machine's {cores} cores; using {cores}")
        return cores
    return opt["num_workers"]


def quiet_library_warnings() -> None:
    """Warnings that say nothing to a user of this project (each was seen at every run)."""
    warnings.filterwarnings("ignore", message=".*TensorFloat32 tensor cores.*")
    warnings.filterwarnings("ignore", message=".*suggested max number of worker.*")
    warnings.filterwarnings("ignore", message=".*performance drop because we have not yet implemented the batching.*")


TRAIN_SIZE = {"cifar100": 50_000, "imagenet": 1_281_167}  # training images of each dataset


def check_memory(method_cls: type[Distiller], opt: dict[str, Any], teacher_arch: str | None, trials: int,
                 device: torch.device) -> None:
    """Refuse options whose weights, optimizer state, buffers and step (a typo in a size, say) would not fit: built
    on the meta device, which allocates nothing."""
    # A per-sample memory is sized by the training set, not read yet: the full dataset's size stands in for it.
    extra = {"train_labels": torch.arange(TRAIN_SIZE[opt["dataset"]]) % opt["n_cls"]} if method_cls.needs_index else {}
    try:
        with torch.device("meta"):
            student = build_model(opt["student_model"], opt["n_cls"])
            teacher = build_model(teacher_arch, opt["n_cls"]) if teacher_arch else None
            method = method_cls(student, teacher, opt, **extra)
    except RuntimeError as err:  # a size whose tensor has more bytes than an index holds (e.g. hidden_dim=2**62)
        if "overflow" not in str(err):
            raise
        raise OptionsError(f"these options ask for a tensor too large to exist ({str(err).splitlines()[0]}); "
                           "lower the sizes in the options") from None
    sizes = {k: t.numel() * t.element_size() for k, t in method.checkpoint_state().items()}
    trained = sum(p.numel() * p.element_size() for p in method.trainable_parameters())
    step = method_cls.step_bytes(opt) * (trials if method_cls.stackable else 1)  # unstackable: one at a time
    need = (sum(sizes.values()) + 2 * trained) * trials + step  # + gradients and momentum
    free = _free_bytes(device)
    if free is not None and need > 0.8 * free:
        shown = {**sizes, **({"a training step": step} if step else {})}
        largest = ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in sorted(shown.items(), key=lambda kv: -kv[1])[:3])
        raise OptionsError(f"these options need about {need / 2**30:.1f} GiB for weights, optimizer state and buffers"
                           f"{' and a training step' if step else ''} ({trials} trial(s); largest: {largest}) but "
                           f"{free / 2**30:.1f} GiB is free on {device}; lower the sizes in the options or train fewer "
                           "trials at once")


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def wrap_ddp(method: Distiller, device: torch.device) -> nn.Module:
    # Buffers are not broadcast at each forward: every rank's BatchNorm sees its own batch, as in one process.
    return nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                               forward_sync_buffers=False)


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
    mine = torch.stack([tensor_fingerprint(state[n]) for n in names]).to(next(method.parameters()).device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    for rank, theirs in enumerate(every):
        differs = [n for n, a, b in zip(names, mine.tolist(), theirs.tolist()) if a != b]
        if differs:
            raise RuntimeError(f"ranks diverged: {', '.join(differs[:5])} differ between this rank and rank {rank}")


@torch.no_grad()
def tensor_fingerprint(t: torch.Tensor) -> torch.Tensor:
    """A float64 scalar on t's device that changes with any value of a tensor (and with their order)."""
    return (t.double() * (1 + torch.arange(t.numel(), device=t.device).view(t.shape) % 7)).sum()
