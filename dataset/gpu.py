"""The device loader: the whole uint8 set on the device, batches augmented there (dataset/augment.py's recipe)."""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch

from dataset.augment import CIFAR100, Draws, Recipe


def _new_generator(device: torch.device) -> torch.Generator:
    """A loader's generator before its first `set_epoch_seed`: the same for a new loader and a sibling."""
    return torch.Generator(device=device).manual_seed(0)


class GPULoader:
    """Training batches made on the device: `(views, labels, index)`, views a list of n_views B x 3 x 32 x 32
    (each view drawn independently by `recipe`), index the samples' positions in the training set (int64).

    Reshuffled each epoch from its own generator, seeded by `set_epoch_seed`. With world_size > 1 each rank takes
    `rank::world_size` of the shared permutation, padded by repeating from its start as DistributedSampler does,
    so all ranks have equally many batches.
    """

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int, n_views: int,
                 device: str | torch.device, shuffle: bool = True, drop_last: bool = False, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, recipe: Recipe = CIFAR100) -> None:
        self.device = torch.device(device)
        self.batch_size, self.n_views = batch_size, n_views
        self.shuffle, self.drop_last, self.channels_last = shuffle, drop_last, channels_last
        self.rank, self.world_size = rank, world_size
        self.recipe, self.n_data = recipe, images_u8.shape[0]  # n_data: the training set's size
        # Padded once on the host (no transient second copy on the device), stored HWC.
        self._padded = recipe.pad(images_u8.cpu()).to(self.device)
        self._labels = labels.to(self.device, torch.int64)
        recipe.prepare(self._padded.device)
        self.num_samples = math.ceil(self.n_data / world_size)  # per rank
        self.generator = _new_generator(self.device)

    def sibling(self) -> GPULoader:
        """This loader over the same device tensors (no second copy) with its own generator, started as a new
        loader's: after `set_epoch_seed(s)` it yields what a fresh GPULoader seeded with s would, so trials that
        share one dataset on the device each draw their own epochs."""
        twin = copy.copy(self)  # attributes are references: the padded set and labels are shared
        twin.generator = _new_generator(self.device)
        return twin

    def set_epoch_seed(self, seed: int) -> None:  # the coming epoch's order and augmentation
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's dataset indices for the coming epoch (advances the generator)."""
        n, dev = self.n_data, self.device
        order = torch.randperm(n, generator=self.generator, device=dev) if self.shuffle else torch.arange(n, device=dev)
        total = self.num_samples * self.world_size
        if total > n:  # DistributedSampler's padding: repeat from the start
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
        mine = self.epoch_indices()
        labels = self._labels[mine]
        v, m = self.n_views, self.num_samples
        # The whole epoch's augmentation parameters in two RNG calls; each view drawn independently.
        # Drawn for all ranks and sliced like the indices, so ranks do not repeat each other's crops.
        total = m * self.world_size
        draws = Draws(*(p[:, self.rank : total : self.world_size]
                        for p in self.recipe.draw((v, total), self.generator, self.device)))
        image = mine.expand(v, m)
        stop = len(self) * self.batch_size if self.drop_last else m
        for start in range(0, stop, self.batch_size):
            sl = slice(start, min(start + self.batch_size, m))
            # All views of the batch in one gather: V*B images.
            x = self.recipe.apply(self._padded, image[:, sl], Draws(*(p[:, sl] for p in draws)), self.channels_last)
            yield list(x.split(sl.stop - sl.start)), labels[sl], mine[sl]


class GPUTestLoader:
    """Normalised test batches on the device, `(images, labels)`, in order, no augmentation."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int, device: str | torch.device,
                 channels_last: bool = False, recipe: Recipe = CIFAR100) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        # Normalised once: 10k CIFAR images are 123 MB of float32; batches are then free slices.
        self._images = recipe.normalize(images_u8.to(self.device), channels_last)
        self._labels = labels.to(self.device, torch.int64)

    def __len__(self) -> int:
        return math.ceil(self._labels.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return zip(self._images.split(self.batch_size), self._labels.split(self.batch_size))
