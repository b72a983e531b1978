"""The training and test batches a run sees, from either loader, as device tensors.

Both loaders yield `(views, labels)` for training and `(images, labels)` for testing, already on the
device. Each epoch's randomness is drawn from the global torch generator, so restoring that generator
on resume restores the data order too.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from dataset import (
    DataError,
    GPULoader,
    GPUTestLoader,
    MultiViewCIFAR,
    build_imagenet_loaders,
    build_torchvision_loaders,
    load_cifar100,
)


class DeviceBatches:
    """A torchvision DataLoader whose batches are moved to the device (the published CPU path)."""

    sharded = False

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device, channels_last: bool):
        self.loader, self.device = loader, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def _move(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        for images, labels in self.loader:
            labels = labels.to(self.device, non_blocking=True)
            if isinstance(images, (list, tuple)):
                yield [self._move(v) for v in images], labels
            else:
                yield self._move(images), labels


class GPUBatches:
    """The GPU loader, reseeded each epoch from the global torch generator."""

    def __init__(self, loader: GPULoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch_seed(int(torch.randint(0, 2**62, ()).item()))

    def __iter__(self):
        return iter(self.loader)


def build_data(opt: dict, n_views: int, device: torch.device, gpu_loader: bool, channels_last: bool,
               rank: int = 0, world_size: int = 1) -> tuple[Any, Any]:
    """(train batches, test batches) for the options' dataset."""
    if opt["dataset"] == "imagenet":
        sampler = _distributed_sampler_factory(rank, world_size) if world_size > 1 else None
        train, test = build_imagenet_loaders(opt["data_folder"], opt["batch_size"], n_views, opt["num_workers"],
                                             opt["pin_memory"], sampler_factory=sampler)
        test = DeviceBatches(test, device, channels_last)
        test.sharded = world_size > 1  # each rank a part of the validation set: the trainer sums the totals
        return DeviceBatches(train, device, channels_last), test
    arrays = load_cifar100(opt["data_folder"], download=opt["download"])
    _check_labels(arrays.train_labels, opt["n_cls"])
    if gpu_loader:
        train = GPULoader(arrays.train_images, arrays.train_labels, opt["batch_size"], n_views, device,
                          channels_last=channels_last, rank=rank, world_size=world_size)
        test = GPUTestLoader(arrays.test_images, arrays.test_labels, opt["batch_size"], device,
                             channels_last=channels_last)
        return GPUBatches(train), test
    sampler = None
    if world_size > 1:
        sampler = _distributed_sampler_factory(rank, world_size)(
            MultiViewCIFAR(arrays.train_images, arrays.train_labels, n_views))
    train, test = build_torchvision_loaders(arrays, opt["batch_size"], n_views, opt["num_workers"],
                                            opt["pin_memory"] and device.type == "cuda", sampler=sampler)
    return DeviceBatches(train, device, channels_last), DeviceBatches(test, device, channels_last)


def _distributed_sampler_factory(rank: int, world_size: int):
    seed = int(torch.randint(0, 2**31, ()).item())  # equal on every rank: the global generator is shared

    def make(dataset):
        return torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                                   seed=seed)
    return make


def _check_labels(labels: torch.Tensor, n_cls: int) -> None:
    top = int(labels.max()) + 1
    if top > n_cls:
        raise DataError(f"the training labels go up to {top - 1} but n_cls is {n_cls}; set n_cls: {top} or more")
