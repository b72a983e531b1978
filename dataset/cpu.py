"""The CPU loader, as the published code has it: a DataLoader whose workers augment image by image (with
dataset/augment.py's recipe, the device loader's code), and whose epochs repeat from a generator."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dataset.augment import CIFAR100, Recipe
from dataset.cifar import CifarArrays


class MultiViewCIFAR(Dataset):
    """CIFAR images from the uint8 arrays, augmented one at a time by `recipe` (in the loader's workers). Items:
    train=True `(views, label, index)`, `n_views` independent views drawn from torch's global RNG and the item's
    position in the set; train=False `(image, label)`, the image only normalised."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, n_views: int = 3, train: bool = True,
                 recipe: Recipe = CIFAR100) -> None:
        self.images, self.labels = images_u8.cpu(), labels.cpu().tolist()
        self.train, self.n_views, self.recipe = train, n_views, recipe
        self._first = torch.zeros(n_views, dtype=torch.int64)  # every view is of the one padded image

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, ...], int, int] | tuple[torch.Tensor, int]:
        image = self.images[index : index + 1]
        if not self.train:
            return self.recipe.normalize(image)[0], self.labels[index]
        draws = self.recipe.draw((self.n_views,))
        return tuple(self.recipe.apply(self.recipe.pad(image), self._first, draws)), self.labels[index], index


def _with_private_rng(batches: Iterator[Any], seed: int) -> Iterator[Any]:
    """`batches` with torch's CPU RNG swapped for a private state, seeded from `seed`, while each is made."""
    state = torch.Generator().manual_seed(seed).get_state()
    while True:
        outer = torch.get_rng_state()
        torch.set_rng_state(state)
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            state = torch.get_rng_state()
            torch.set_rng_state(outer)
        yield batch


class SeededDataLoader(DataLoader):
    """A DataLoader whose epoch, when it has a `generator`, comes from that generator alone: `manual_seed(s)` fixes
    order and views, and the caller's global RNG is neither used nor advanced. With workers torch does this already
    (each worker's seed is drawn from `generator`); without, the views are drawn from a private RNG seeded from
    `generator` as the epoch starts. Without a generator it is a plain DataLoader."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        if self.num_workers > 0 or self.generator is None:
            return batches
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        return _with_private_rng(batches, seed)


def build_torchvision_loaders(arrays: CifarArrays, batch_size: int, n_views: int, num_workers: int, pin_memory: bool,
                              generator: torch.Generator | None = None, sampler: Sampler | None = None,
                              recipe: Recipe = CIFAR100) -> tuple[DataLoader, DataLoader]:
    """Train loader (shuffled, or `sampler` for distributed runs; last partial batch kept) and test loader.

    Train batches are `(views, labels, index)`: views a list of `n_views` tensors B x 3 x 32 x 32, index the
    samples' positions in the training set; test batches are `(images, labels)`, in order. `generator`: as in
    SeededDataLoader (a `sampler` orders the epoch itself).
    """
    train_set = MultiViewCIFAR(arrays.train_images, arrays.train_labels, n_views, train=True, recipe=recipe)
    test_set = MultiViewCIFAR(arrays.test_images, arrays.test_labels, train=False, recipe=recipe)
    common = dict(num_workers=num_workers, pin_memory=pin_memory)
    train_loader = SeededDataLoader(train_set, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                                    drop_last=False, generator=generator, **common)
    test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, drop_last=False, **common)
    return train_loader, test_loader
