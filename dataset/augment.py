"""The CIFAR training augmentation and normalisation, defined once, as tensor operations on uint8 images.

Every CIFAR loader takes a `Recipe` (default `CIFAR100`, the published one): the CPU loader's workers apply it to
one image at a time, the device loader to whole batches. `draw` then `apply` equals, per view, torchvision's
RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize (tests/test_data_augment.py) as one
gather from the zero-padded image and one fused multiply-add: no loop over images, no host read, no shape that
depends on values, so the same code runs on the CPU and on CUDA.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dataset.constants import CIFAR100_MEAN, CIFAR100_STD, CIFAR_PADDING


class Draws(NamedTuple):
    """The random parameters of some views, tensors of one shape: crop offsets into the padded image, flips."""

    offset_y: torch.Tensor
    offset_x: torch.Tensor
    flip: torch.Tensor


@dataclass(frozen=True)
class Recipe:
    """Pad `padding` black pixels on every side, crop the original size at offsets uniform in 0..2*padding on
    each axis, flip left-right with probability `flip_p`, then normalise with `mean` and `std` per channel.
    Test images are only normalised."""

    padding: int = CIFAR_PADDING
    flip_p: float = 0.5
    mean: tuple[float, ...] = CIFAR100_MEAN
    std: tuple[float, ...] = CIFAR100_STD

    def pad(self, images_u8: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S uint8 -> B x (S + 2p) x (S + 2p) x 3, zeros around (HWC: a pixel's 3 bytes adjacent)."""
        p = self.padding
        return F.pad(images_u8.permute(0, 2, 3, 1), (0, 0, p, p, p, p)).contiguous()

    def draw(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
             device: torch.device | None = None) -> Draws:
        """Parameters of `shape` views from `generator` (torch's global RNG if None), in two RNG calls."""
        offsets = torch.randint(0, 2 * self.padding + 1, (2, *shape), generator=generator, device=device)
        flip = torch.rand(shape, generator=generator, device=device) < self.flip_p
        return Draws(offsets[0], offsets[1], flip)

    def apply(self, padded_hwc: torch.Tensor, image: torch.Tensor, draws: Draws,
              channels_last: bool = False) -> torch.Tensor:
        """Views of `padded_hwc[image]` (`image` a tensor of indices, shaped like the draws) with those draws:
        K x 3 x S x S float32, K the number of draws, in the channels_last memory format if asked."""
        size = padded_hwc.shape[1] - 2 * self.padding
        ar = torch.arange(size, device=padded_hwc.device)
        rows = draws.offset_y.unsqueeze(-1) + ar
        cols = draws.offset_x.unsqueeze(-1) + torch.where(draws.flip.unsqueeze(-1), (size - 1) - ar, ar)
        # One gather: [..., rows, cols, 3 channels] straight from the padded images.
        pixels = padded_hwc[image[..., None, None], rows[..., :, None], cols[..., None, :]]
        return self.normalize(pixels.reshape(-1, size, size, 3).permute(0, 3, 1, 2), channels_last)

    def prepare(self, device: torch.device) -> None:
        """Put the normalisation constants on `device` now, so that no epoch copies them there (a host sync)."""
        _scale_shift(self, device)

    def normalize(self, pixels: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """B x 3 x S x S uint8 -> float32, normalised only (as test images are)."""
        scale, shift = _scale_shift(self, pixels.device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device, memory_format=fmt)
        return torch.addcmul(shift, pixels, scale, out=out)  # uint8 -> float, /255, normalise: one kernel


@functools.cache
def _scale_shift(recipe: Recipe, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x/255 then (x - mean)/std, folded to x*scale + shift, as 3 x 1 x 1 float32 tensors on `device`.

    shift is computed in float32 exactly as torchvision computes (0 - mean)/std, so the black padding comes
    out bit-identical; scale in float64 keeps the rest within 1e-6 of torchvision. Cached: made on the device
    once, since a host-to-device copy on every call would be a host sync.
    """
    mean = torch.tensor(recipe.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(recipe.std, dtype=torch.float32).view(-1, 1, 1)
    return (1.0 / (255.0 * std.double())).float().to(device), ((0.0 - mean) / std).to(device)


CIFAR100 = Recipe()  # the published recipe


def augment(images_u8: torch.Tensor, generator: torch.Generator, channels_last: bool = False,
            recipe: Recipe = CIFAR100) -> torch.Tensor:
    """One random view of each of B x 3 x S x S uint8 images, drawn from `generator` (on the images' device)."""
    index = torch.arange(images_u8.shape[0], device=images_u8.device)
    draws = recipe.draw((images_u8.shape[0],), generator, images_u8.device)
    return recipe.apply(recipe.pad(images_u8), index, draws, channels_last)
