"""The on-device augmentation (run on the CPU): crop, flip and normalise against torchvision, and its distribution."""
import math

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

from dataset import augment, crop_flip_normalize
from dataset.constants import CIFAR100_MEAN, CIFAR100_STD

MEAN = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR100_STD).view(3, 1, 1)
NORMALIZE = transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)


def to_u8(x: torch.Tensor) -> torch.Tensor:
    """Undo normalisation (channels at dim -3): back to the 0..255 pixel values."""
    return ((x * STD + MEAN) * 255).round().to(torch.int64)


def test_crop_flip_normalize_matches_torchvision_for_every_offset():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    oy, ox, flip = torch.meshgrid(torch.arange(9), torch.arange(9), torch.arange(2), indexing="ij")
    oy, ox, flip = oy.flatten(), ox.flatten(), flip.flatten().bool()
    batch = image.expand(len(oy), 3, 32, 32)
    out = crop_flip_normalize(batch, oy, ox, flip, torch.tensor(CIFAR100_MEAN), torch.tensor(CIFAR100_STD))
    out_cl = crop_flip_normalize(batch, oy, ox, flip, channels_last=True)
    assert out.dtype == torch.float32 and out.shape == (162, 3, 32, 32) and out.is_contiguous()
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, out_cl)
    padded = TF.pad(pil, 4, fill=0)  # what RandomCrop(32, padding=4) does before choosing the offset
    for k in range(len(oy)):
        ref = TF.crop(padded, int(oy[k]), int(ox[k]), 32, 32)
        ref = NORMALIZE(TF.to_tensor(TF.hflip(ref) if flip[k] else ref))
        torch.testing.assert_close(out[k], ref, atol=1e-6, rtol=0)


def test_padding_is_black_before_normalisation():
    image = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    out = crop_flip_normalize(image, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))[0]
    black = NORMALIZE(torch.zeros(3, 1, 1))  # -mean/std as torchvision computes it
    assert torch.equal(out[:, :4, :], black.expand(3, 4, 32)) and torch.equal(out[:, :, :4], black.expand(3, 32, 4))
    assert torch.equal(to_u8(out[:, 4:, 4:]), torch.full((3, 28, 28), 200))


def test_augment_distribution():
    # Pixel (r, c) holds 7r+1 / 7c+1 in channels 0 / 1, so each output tells its offsets and flip.
    r = torch.arange(32) * 7 + 1
    image = torch.stack([r.view(32, 1).expand(32, 32), r.view(1, 32).expand(32, 32), torch.full((32, 32), 128)])
    n = 8100
    out = augment(image.to(torch.uint8).expand(n, 3, 32, 32), torch.Generator().manual_seed(1))
    px = to_u8(out[:, :, 16:17, 15:17])[:, :, 0]  # n x 3 x 2
    oy = (px[:, 0, 0] - 1) // 7 + 4 - 16
    flip = px[:, 1, 1] < px[:, 1, 0]
    ox = (px[:, 1, 1] - 1) // 7 + 4 - torch.where(flip, 15, 16)
    for off in (oy, ox):
        counts = torch.bincount(off, minlength=9).double()
        assert counts.numel() == 9 and counts.min() > 0
        assert ((counts - n / 9) ** 2 / (n / 9)).sum() < 40  # chi-square, 8 dof (p ~ 1e-5)
    joint = torch.bincount(oy * 9 + ox, minlength=81).double()
    assert joint.numel() == 81 and ((joint - n / 81) ** 2 / (n / 81)).sum() < 150  # 80 dof
    assert abs(int(flip.sum()) - n / 2) < 4 * math.sqrt(n) / 2  # binomial, 4 sigma
    # The same generator state gives the same views.
    again = augment(image.to(torch.uint8).expand(n, 3, 32, 32), torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
