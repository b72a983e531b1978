"""CPU data path, as the published code does it: torchvision transforms on PIL images in workers."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from dataset.cifar import CifarArrays
from dataset.constants import CIFAR100_MEAN, CIFAR100_STD, CIFAR_IMAGE_SIZE, CIFAR_PADDING


def cifar_train_transform() -> Callable[[Image.Image], torch.Tensor]:
    """One training view: pad 4 zeros + random 32x32 crop, random flip, ToTensor, Normalize."""
    return transforms.Compose([
        transforms.RandomCrop(CIFAR_IMAGE_SIZE, padding=CIFAR_PADDING),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
    ])


def cifar_test_transform() -> Callable[[Image.Image], torch.Tensor]:
    """Test images: normalise only."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)])


class MultiViewTransform:
    """Apply one (random) transform `n_views` times independently; returns a tuple of views."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], n_views: int) -> None:
        if n_views < 1:
            raise ValueError(f"n_views must be at least 1, got {n_views}")
        self.transform = transform
        self.n_views = n_views

    def __call__(self, image: Any) -> tuple[torch.Tensor, ...]:
        return tuple(self.transform(image) for _ in range(self.n_views))


class MultiViewCIFAR(Dataset):
    """CIFAR images from uint8 arrays as PIL images, like torchvision's CIFAR100 class.

    train=True: item is `(views, label)`, views a tuple of `n_views` independent augmentations.
    train=False: item is `(image, label)`, the normalised image (one view, no augmentation).
    """

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, n_views: int = 3, train: bool = True) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 4 or images_u8.shape[1] != 3:
            raise ValueError(f"images must be uint8 N x 3 x H x W, got {images_u8.dtype} {tuple(images_u8.shape)}")
        if labels.shape[0] != images_u8.shape[0]:
            raise ValueError(f"{images_u8.shape[0]} images but {labels.shape[0]} labels")
        # HWC once, up front, so each item is a cheap PIL wrap rather than a permute + copy.
        self.images_hwc = np.ascontiguousarray(images_u8.permute(0, 2, 3, 1).cpu().numpy())
        self.labels = labels.cpu().tolist()
        self.train = train
        self.n_views = n_views
        self.transform: Callable[[Image.Image], Any] = (
            MultiViewTransform(cifar_train_transform(), n_views) if train else cifar_test_transform()
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...] | torch.Tensor, int]:
        image = Image.fromarray(self.images_hwc[index])
        return self.transform(image), self.labels[index]


def seed_worker(worker_id: int) -> None:
    """Seed Python's and numpy's RNGs in a loader worker from its torch seed.

    torch seeds each worker from a base seed drawn from the global torch RNG when the epoch's
    iterator is created, so a run with a restored global RNG state repeats; this extends that to
    code in the worker that uses `random` or `np.random`.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class _PrivateRNGBatches:
    """Batches from `batches` with torch's CPU RNG swapped for a private state while each is made."""

    def __init__(self, batches: Iterator[Any], seed: int) -> None:
        self._batches = batches
        self._state = torch.Generator().manual_seed(seed).get_state()

    def __iter__(self) -> _PrivateRNGBatches:
        return self

    def __len__(self) -> int:
        return len(self._batches)

    def __next__(self) -> Any:
        outer = torch.get_rng_state()
        torch.set_rng_state(self._state)
        try:
            return next(self._batches)
        finally:
            self._state = torch.get_rng_state()
            torch.set_rng_state(outer)


class SeededDataLoader(DataLoader):
    """A DataLoader whose epoch, when it has a `generator`, comes from that generator alone.

    With workers torch does this already: the sampler shuffles from `generator`, and each worker's
    torch seed is a base drawn from `generator` plus its id. Without workers the transforms would
    draw from the global torch RNG in this process; here they draw from a private RNG seeded from
    `generator` when the epoch starts, swapped in around each batch, so `generator.manual_seed(s)`
    fixes order and views and the caller's global RNG is neither used nor advanced.
    Without a generator it is a plain DataLoader (the global RNG drives the epoch).
    """

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        if self.num_workers > 0 or self.generator is None:
            return batches
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        return _PrivateRNGBatches(batches, seed)


def build_torchvision_loaders(
    arrays: CifarArrays,
    batch_size: int,
    n_views: int,
    num_workers: int,
    pin_memory: bool,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Train loader (shuffled, or `sampler` for distributed runs; last partial batch kept) and test loader.

    Train batches are `(views, labels)` with views a list of `n_views` tensors B x 3 x 32 x 32;
    test batches are `(images, labels)`, not shuffled. With `generator`, `generator.manual_seed(s)`
    before an epoch fixes its order (unless `sampler` orders it) and its views, with or without
    workers (SeededDataLoader); without one the global torch RNG drives both, as in torch.
    """
    train_set = MultiViewCIFAR(arrays.train_images, arrays.train_labels, n_views=n_views, train=True)
    test_set = MultiViewCIFAR(arrays.test_images, arrays.test_labels, train=False)
    common = dict(num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=seed_worker)
    train_loader = SeededDataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=False,
        generator=generator,
        **common,
    )
    test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, drop_last=False, **common)
    return train_loader, test_loader
