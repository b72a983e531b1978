"""ImageNet loaders (ImageFolder `train/` and `val/`), same item structure as MultiViewCIFAR (torchvision's
ImageNet recipe, on PIL images in the loader's workers)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets, transforms

from dataset.cifar import DataError
from dataset.constants import IMAGENET_MEAN, IMAGENET_STD
from dataset.cpu import SeededDataLoader


class _TrainFolder(datasets.ImageFolder):
    """Training items `(views, label, index)`: `n_views` independent draws of the transform, the image's index."""

    n_views = 1

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], int, int]:
        image = self.loader(self.samples[index][0])
        return tuple(self.transform(image) for _ in range(self.n_views)), self.targets[index], index


def _image_folder(root: Path, transform: Callable, kind: type = datasets.ImageFolder) -> datasets.ImageFolder:
    if not os.path.isdir(root):  # False, not an error, for a name the file system cannot hold
        raise DataError(f"ImageNet folder not found: expected {root} with one sub-folder of images per class")
    try:
        return kind(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:  # e.g. no class folders / no images
        raise DataError(f"cannot use {root} as an ImageFolder: {' '.join(str(err).split())}") from None


def build_imagenet_loaders(data_folder: str, batch_size: int, n_views: int, num_workers: int, pin_memory: bool,
                           sampler_factory: Callable[[Dataset], Sampler | None] | None = None,
                           generator: torch.Generator | None = None) -> tuple[DataLoader, DataLoader]:
    """Train: `(views, label, index)` with n_views RandomResizedCrop(224)+flip views; val: `(image, label)`.
    `sampler_factory(dataset)` may return a sampler (e.g. DistributedSampler) for either split; `generator`
    alone decides the training epoch's order and views, as in `build_torchvision_loaders`."""
    root = Path(data_folder).expanduser()
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_view = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize])
    train_set = _image_folder(root / "train", train_view, _TrainFolder)
    train_set.n_views = n_views
    val_set = _image_folder(root / "val", val_tf)
    train_sampler = sampler_factory(train_set) if sampler_factory else None
    val_sampler = sampler_factory(val_set) if sampler_factory else None
    common = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
    train_loader = SeededDataLoader(train_set, shuffle=train_sampler is None, sampler=train_sampler, drop_last=False,
                                    generator=generator, **common)
    val_loader = DataLoader(val_set, shuffle=False, sampler=val_sampler, drop_last=False, **common)
    return train_loader, val_loader
