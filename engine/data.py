"""The training and test batches a run sees, from either loader, as device tensors.

Every trial has its own training loader; each epoch it is seeded from that trial's random state, so order
and augmentation are the trial's own and a resume repeats them. Several trials' batches of a step are
stacked along a leading trial dimension. All trials are tested on the same test batches.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch

from dataset import (
    DataError,
    GPULoader,
    GPUTestLoader,
    build_imagenet_loaders,
    build_torchvision_loaders,
    load_cifar100,
)


class DeviceBatches:
    """A DataLoader whose batches are moved to the device (the CPU loader, as published, or ImageNet's). Its shuffle
    order and its workers' seeds come from `generator`, reseeded each epoch."""

    sharded = False

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device, channels_last: bool,
                 generator: torch.Generator | None = None):
        self.loader, self.device, self.generator = loader, device, generator
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch_seed(self, seed: int) -> None:
        if self.generator is not None:
            self.generator.manual_seed(seed)
        sampler = self.loader.sampler
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.seed, sampler.epoch = seed % 2**31, 0  # every rank draws the same seed

    def _move(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """`(views, labels, index)` of a training loader, `(images, labels)` of a test loader, on the device."""
        for images, *rest in self.loader:
            images = [self._move(v) for v in images] if isinstance(images, (list, tuple)) else self._move(images)
            yield images, *(t.to(self.device, non_blocking=True) for t in rest)


class TrainBatches:
    """One step's training batches of every trial: `(views, labels, index)`, each view [B, ...], or [trials, B, ...]
    when `stacked` (a run of several, even once only one is left training); index: each sample's position in the
    whole training set (under torchrun too). `train_labels`: every training sample's label, in that order."""

    def __init__(self, loaders: list[Any], train_labels: torch.Tensor, stacked: bool | None = None):
        self.loaders, self.train_labels = loaders, train_labels
        self.stacked = len(loaders) > 1 if stacked is None else stacked

    def __len__(self) -> int:
        return len(self.loaders[0])

    @property
    def n_data(self) -> int:
        return len(self.train_labels)

    def subset(self, keep: list[int], stacked: bool | None = None) -> TrainBatches:
        return TrainBatches([self.loaders[k] for k in keep], self.train_labels,
                            self.stacked if stacked is None else stacked)

    def set_epoch(self, seeds: list[int]) -> None:
        for loader, seed in zip(self.loaders, seeds, strict=True):
            loader.set_epoch_seed(seed)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        for batches in zip(*self.loaders):
            views, labels, index = zip(*batches)
            if not self.stacked:
                yield views[0], labels[0], index[0]
            else:
                yield [torch.stack(vs) for vs in zip(*views)], torch.stack(labels), torch.stack(index)


def build_data(opt: dict[str, Any], n_views: int, device: torch.device, loader: str, trials: int = 1,
               rank: int = 0, world_size: int = 1, min_batch: int = 1, channels_last: bool = False
               ) -> tuple[TrainBatches, Any]:
    """(training batches of `trials` trials, test batches); `min_batch`: the smallest batch the method trains on."""
    workers, pin = opt["num_workers"], opt["pin_memory"] and device.type == "cuda"
    # Seeded each epoch from the trial's random state (DeviceBatches.set_epoch_seed).
    sampler = partial(torch.utils.data.DistributedSampler, num_replicas=world_size, rank=rank, shuffle=True) \
        if world_size > 1 else None
    if opt["dataset"] == "imagenet":
        loaders = []
        for _ in range(trials):
            generator = torch.Generator()
            train, test = build_imagenet_loaders(opt["data_folder"], opt["batch_size"], n_views, workers, pin,
                                                 sampler_factory=sampler, generator=generator)
            loaders.append(DeviceBatches(train, device, channels_last, generator))
        test = DeviceBatches(test, device, channels_last)
        test.sharded = world_size > 1  # each rank a part of the validation set: the trainer sums the totals
        return TrainBatches(loaders, torch.as_tensor(loaders[0].loader.dataset.targets)), test
    arrays = load_cifar100(opt["data_folder"], download=opt["download"])
    check_labels(arrays.train_labels, arrays.test_labels, opt["n_cls"])
    check_trainable(len(arrays.train_labels), min_batch, world_size, opt["distill"])
    if loader == "gpu":
        loaders = [GPULoader(arrays.train_images, arrays.train_labels, opt["batch_size"], n_views, device,
                             channels_last=channels_last, rank=rank, world_size=world_size)]
        loaders += [loaders[0].sibling() for _ in range(trials - 1)]
        test = GPUTestLoader(arrays.test_images, arrays.test_labels, opt["batch_size"], device,
                             channels_last=channels_last)
        return TrainBatches(loaders, arrays.train_labels), test
    loaders = []
    for _ in range(trials):
        generator = torch.Generator()
        train_sampler = sampler(range(len(arrays.train_labels))) if sampler else None
        train, test = build_torchvision_loaders(arrays, opt["batch_size"], n_views, workers, pin,
                                                generator=generator, sampler=train_sampler)
        loaders.append(DeviceBatches(train, device, channels_last, generator))
    return TrainBatches(loaders, arrays.train_labels), DeviceBatches(test, device, channels_last)


def check_labels(train: torch.Tensor, test: torch.Tensor, n_cls: int) -> None:
    for split, labels in (("training", train), ("test", test)):
        if labels.numel() == 0:
            raise DataError(f"the {split} split holds no images")
        top = int(labels.max()) + 1
        if top > n_cls:
            raise DataError(f"the {split} labels go up to {top - 1} but n_cls is {n_cls}; "
                            f"set n_cls: {top} or more")


def check_trainable(images: int, min_batch: int, world_size: int, method: str) -> None:
    """Each process must get at least one batch the method can train on (smaller ones are skipped)."""
    each = -(-images // world_size)  # a DistributedSampler pads every share to this
    if each < min_batch:
        shared = f", {each} for each of {world_size} processes" if world_size > 1 else ""
        raise DataError(f"the training split holds {images} image{'s' * (images != 1)}{shared}: distill: {method} "
                        f"trains on batches of {min_batch} or more, so every batch would be skipped; use more images")
