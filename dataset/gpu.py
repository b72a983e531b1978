"""Fast data path: the whole uint8 set on the device and batch augmentation there.

Per view the result equals torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip +
ToTensor + Normalize, the published training augmentation (docs/method.md): crop and flip are
one gather from the zero-padded image, ToTensor + Normalize one fused multiply-add. No Python
loops over images, no host syncs, no data-dependent shapes; the same code runs on CPU and CUDA.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from dataset.constants import CIFAR100_MEAN, CIFAR100_STD, CIFAR_IMAGE_SIZE, CIFAR_PADDING

_S = CIFAR_IMAGE_SIZE
_P = CIFAR_PADDING
_Stats = torch.Tensor | Sequence[float] | None
_SCALE_SHIFT_CACHE: dict[tuple[str, tuple[float, ...], tuple[float, ...]], tuple[torch.Tensor, torch.Tensor]] = {}


def _scale_shift(mean: _Stats, std: _Stats, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x/255 then (x - mean)/std, folded to x*scale + shift, as 3 x 1 x 1 float32 tensors on `device`.

    shift is computed in float32 exactly as torchvision computes (0 - mean)/std, so the black
    padding comes out bit-identical; scale in float64 keeps the rest within 1e-6 of torchvision.
    Tensors given on the device stay there; constants are copied over once and cached, since a
    host-to-device copy on every call would be a host sync.
    """
    if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
        return _fold(torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device))
    m = tuple(float(v) for v in (CIFAR100_MEAN if mean is None else mean))
    s = tuple(float(v) for v in (CIFAR100_STD if std is None else std))
    key = (str(torch.device(device)), m, s)
    if key not in _SCALE_SHIFT_CACHE:
        scale, shift = _fold(torch.tensor(m), torch.tensor(s))
        _SCALE_SHIFT_CACHE[key] = (scale.to(device), shift.to(device))
    return _SCALE_SHIFT_CACHE[key]


def _fold(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m, s = mean.to(torch.float32).view(3, 1, 1), std.to(torch.float32).view(3, 1, 1)
    return (1.0 / (255.0 * s.double())).float(), (0.0 - m) / s


def _pad_hwc(images_u8: torch.Tensor) -> torch.Tensor:
    """B x 3 x 32 x 32 uint8 -> B x 40 x 40 x 3 with 4 zero pixels each side (HWC: a pixel's 3 bytes adjacent)."""
    return F.pad(images_u8.permute(0, 2, 3, 1), (0, 0, _P, _P, _P, _P)).contiguous()


def _gather_normalize(
    padded_hwc: torch.Tensor,
    image_index: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flip: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    channels_last: bool,
) -> torch.Tensor:
    """Crop+flip of `padded_hwc[image_index]` (index tensors of one shape, flattened) -> K x 3 x 32 x 32 float32."""
    ar = torch.arange(_S, device=padded_hwc.device)
    rows = offset_y.unsqueeze(-1) + ar
    cols = offset_x.unsqueeze(-1) + torch.where(flip.unsqueeze(-1), (_S - 1) - ar, ar)
    # One gather: [..., 32 rows, 32 cols, 3 channels] straight from the padded set.
    pix = padded_hwc[image_index[..., None, None], rows[..., :, None], cols[..., None, :]]
    pix = pix.reshape(-1, _S, _S, 3).permute(0, 3, 1, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(pix.shape, dtype=torch.float32, device=pix.device, memory_format=fmt)
    return torch.addcmul(shift, pix, scale, out=out)  # uint8 -> float, /255, normalise: one kernel


def crop_flip_normalize(
    images_u8: torch.Tensor,
    offset_y: torch.Tensor,
    offset_x: torch.Tensor,
    flip: torch.Tensor,
    mean: _Stats = None,
    std: _Stats = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Deterministic per-image crop at (offset_y, offset_x) of the 40x40 zero-padded image, flip, normalise.

    images_u8: B x 3 x 32 x 32 uint8; offsets: B long in 0..8; flip: B bool; mean/std default to
    CIFAR-100's. Returns B x 3 x 32 x 32 float32 (channels_last memory format if asked).
    """
    scale, shift = _scale_shift(mean, std, images_u8.device)
    index = torch.arange(images_u8.shape[0], device=images_u8.device)
    return _gather_normalize(_pad_hwc(images_u8), index, offset_y, offset_x, flip, scale, shift, channels_last)


def _draw_params(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets uniform in 0..8 on each axis and flips with p=0.5, from `generator` (on `device`)."""
    offsets = torch.randint(0, 2 * _P + 1, (2, *shape), generator=generator, device=device)
    flip = torch.rand(shape, generator=generator, device=device) < 0.5
    return offsets[0], offsets[1], flip


def augment(
    images_u8: torch.Tensor,
    generator: torch.Generator,
    mean: _Stats = None,
    std: _Stats = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Random pad-4 crop + flip + normalise of each image, drawn from `generator` (same device as images)."""
    oy, ox, flip = _draw_params((images_u8.shape[0],), generator, images_u8.device)
    return crop_flip_normalize(images_u8, oy, ox, flip, mean, std, channels_last)


def _check(images_u8: torch.Tensor, labels: torch.Tensor) -> None:
    if images_u8.dtype != torch.uint8 or tuple(images_u8.shape[1:]) != (3, _S, _S):
        raise ValueError(f"images must be uint8 N x 3 x {_S} x {_S}, got {images_u8.dtype} {tuple(images_u8.shape)}")
    if labels.shape != (images_u8.shape[0],):
        raise ValueError(f"labels must have shape ({images_u8.shape[0]},), got {tuple(labels.shape)}")


def _new_generator(device: torch.device) -> torch.Generator:
    """A loader's generator before its first `set_epoch_seed`: the same for a new loader and a sibling."""
    return torch.Generator(device=device).manual_seed(0)


class GPULoader:
    """Training batches made on the device: `(views, labels)`, views a list of n_views B x 3 x 32 x 32.

    Reshuffled each epoch from its own generator; call `set_epoch_seed` before each epoch with a
    seed drawn from the global torch RNG so that restoring that RNG restores order and views.
    With world_size > 1 each rank takes `rank::world_size` of the shared permutation, padded by
    repeating from its start as DistributedSampler does, so all ranks have equally many batches.
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        n_views: int,
        device: str | torch.device,
        shuffle: bool = True,
        drop_last: bool = False,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check(images_u8, labels)
        if batch_size < 1 or n_views < 1:
            raise ValueError(f"batch_size and n_views must be positive, got {batch_size} and {n_views}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.device = torch.device(device)
        self.batch_size, self.n_views = batch_size, n_views
        self.shuffle, self.drop_last, self.channels_last = shuffle, drop_last, channels_last
        self.rank, self.world_size = rank, world_size
        self.dataset_size = images_u8.shape[0]
        # Padded once on the host (no transient second copy on the device), stored HWC.
        self._padded = _pad_hwc(images_u8.cpu()).to(self.device)
        self._labels = labels.to(self.device, torch.int64)
        self._scale, self._shift = _scale_shift(None, None, self.device)
        self.num_samples = math.ceil(self.dataset_size / world_size)  # per rank
        self.generator = _new_generator(self.device)

    def sibling(self) -> GPULoader:
        """A loader over the same device tensors (no second copy of images or labels), own generator.

        Batch size, views, rank/world and options are this loader's. Its generator starts as a new
        loader's does, so after `set_epoch_seed(s)` it yields exactly what a fresh GPULoader
        seeded with s would: trials that share one dataset on the device each draw their own epochs.
        """
        twin = copy.copy(self)  # attributes are references: the padded set and labels are shared
        twin.generator = _new_generator(self.device)
        return twin

    def set_epoch_seed(self, seed: int) -> None:
        """Seed the loader's generator for the coming epoch (order and augmentation)."""
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's dataset indices for the coming epoch (advances the generator)."""
        n, dev = self.dataset_size, self.device
        order = torch.randperm(n, generator=self.generator, device=dev) if self.shuffle else torch.arange(n, device=dev)
        total = self.num_samples * self.world_size
        if total > n:  # DistributedSampler's padding: repeat from the start
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        mine = self.epoch_indices()
        labels = self._labels[mine]
        v, m = self.n_views, self.num_samples
        # The whole epoch's augmentation parameters in two RNG calls; each view drawn independently.
        # Drawn for all ranks and sliced like the indices, so ranks do not repeat each other's crops.
        total = m * self.world_size
        oy, ox, flip = (p[:, self.rank : total : self.world_size]
                        for p in _draw_params((v, total), self.generator, self.device))
        index = mine.expand(v, m)
        stop = len(self) * self.batch_size if self.drop_last else m
        for start in range(0, stop, self.batch_size):
            sl = slice(start, min(start + self.batch_size, m))
            x = _gather_normalize(  # all views of the batch in one gather: V*B images
                self._padded, index[:, sl], oy[:, sl], ox[:, sl], flip[:, sl],
                self._scale, self._shift, self.channels_last,
            )
            yield list(x.split(sl.stop - sl.start)), labels[sl]


class GPUTestLoader:
    """Normalised test batches on the device, `(images, labels)`, in order, no augmentation."""

    def __init__(
        self,
        images_u8: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: str | torch.device,
        channels_last: bool = False,
    ) -> None:
        _check(images_u8, labels)
        self.device = torch.device(device)
        self.batch_size = batch_size
        scale, shift = _scale_shift(None, None, self.device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        src = images_u8.to(self.device)
        # Normalised once: 10k CIFAR images are 123 MB of float32; batches are then free slices.
        out = torch.empty(src.shape, device=self.device, memory_format=fmt)
        self._images = torch.addcmul(shift, src, scale, out=out)
        self._labels = labels.to(self.device, torch.int64)

    def __len__(self) -> int:
        return math.ceil(self._labels.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self._labels.shape[0], self.batch_size):
            yield self._images[start : start + self.batch_size], self._labels[start : start + self.batch_size]
