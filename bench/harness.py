"""What the bench scripts share: runs of a method (CoCoRD unless said) built the way the trainer builds them
(engine.step), on random CIFAR-sized data, so that what is measured and compared is the real step."""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch

from dataset import GPULoader, build_torchvision_loaders
from dataset.cifar import CifarArrays
from distiller import Distiller, build_options, method_class
from engine.data import DeviceBatches, TrainBatches
from engine.machine import Speed
from engine.replicas import SingleTrial, StackedTrials
from engine.step import Step, train_parts
from models import build_model
from utils.meter import DeviceMeter

SMALL_HEADS = {"key_size": 256, "hidden_dim": 128, "embedding_dim": 64, "pred_dim": 32}
VARIANTS = {  # the published path, and the fast path piece by piece
    "eager": Speed(loader="torchvision"),
    "eager_gpu": Speed(loader="gpu"),
    "fast": Speed(loader="gpu", cuda_graph=True, channels_last=True, streams=True),
    "fast_nostream": Speed(loader="gpu", cuda_graph=True, channels_last=True),
    "fast_compile": Speed(loader="gpu", cuda_graph=True, compile=True, channels_last=True, streams=True),
}


def on_device(speed: Speed, device: torch.device) -> Speed:
    """What of `speed` this device can run (graphs and streams need a GPU)."""
    gpu = device.type == "cuda"
    return replace(speed, cuda_graph=speed.cuda_graph and gpu, streams=speed.streams and gpu, amp=speed.amp and gpu)


def random_arrays(n: int, seed: int = 0) -> CifarArrays:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (n,), generator=g)
    return CifarArrays(images, labels, images[: n // 5], labels[: n // 5], [str(i) for i in range(100)])


def options(pair: str, batch: int, cocord: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    teacher, student = pair.split(":")
    return build_options({"student_model": student, "teacher_model": teacher, "batch_size": batch,
                          **({"cocord": cocord} if cocord is not None else {}), **extra})


def make_methods(opt: dict[str, Any], trials: int, device: torch.device, dtype: torch.dtype = torch.float32,
                 seed: int = 0, train_labels: torch.Tensor | None = None) -> list[Distiller]:
    """`trials` methods of `opt`'s distill sharing one (random, frozen) teacher; trial k initialised from seed + k.
    `train_labels`: the training set's labels, for a method that needs them (CRD)."""
    cls = method_class(opt["distill"])
    extra = {"train_labels": train_labels} if cls.needs_index else {}
    torch.manual_seed(seed)
    teacher = build_model(opt["teacher_model"], opt["n_cls"]).eval()
    methods = []
    for k in range(trials):
        torch.manual_seed(seed + 1 + k)
        methods.append(cls(build_model(opt["student_model"], opt["n_cls"]), teacher, opt, **extra))
    return [m.to(device=device, dtype=dtype) for m in methods]


def make_step(methods: list[Distiller], opt: dict[str, Any], speed: Speed, device: torch.device
              ) -> tuple[SingleTrial | StackedTrials, torch.optim.Optimizer, DeviceMeter, Step]:
    """One trial through its method, several stacked, and what trains them: as engine.step builds them."""
    fmt = torch.channels_last if speed.channels_last else torch.contiguous_format
    methods = [m.to(memory_format=fmt) for m in methods]
    replicas = (SingleTrial(methods[0]) if len(methods) == 1
                else StackedTrials.from_methods(methods, speed.channels_last))
    return (replicas, *train_parts(replicas, type(methods[0]), opt, speed, device))


def make_batches(arrays: CifarArrays, trials: int, speed: Speed, device: torch.device, batch: int,
                 workers: int, n_views: int = 3) -> TrainBatches:
    if speed.loader == "gpu":
        first = GPULoader(arrays.train_images, arrays.train_labels, batch, n_views, device,
                          channels_last=speed.channels_last)
        return TrainBatches([first] + [first.sibling() for _ in range(trials - 1)], arrays.train_labels)
    loaders = []
    for _ in range(trials):
        g = torch.Generator()
        train, _ = build_torchvision_loaders(arrays, batch, n_views, workers, device.type == "cuda", generator=g)
        loaders.append(DeviceBatches(train, device, speed.channels_last, g))
    return TrainBatches(loaders, arrays.train_labels)


def copies(methods: list[Distiller]) -> list[Distiller]:
    """Independent copies sharing the one teacher (the memo makes deepcopy take it as it is)."""
    return [copy.deepcopy(m, {id(m.teacher): m.teacher}) for m in methods]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|; tensors that are zero up to rounding (|b| < 1e-12: conv biases before a BatchNorm,
    whose gradient is rounding noise) are compared absolutely."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    return diff / scale if scale > 1e-12 else diff
