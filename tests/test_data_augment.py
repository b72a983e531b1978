"""The augmentation (dataset/augment.py): equal to the published torchvision pipeline for the same random draws,
its distribution, and one recipe read by both loaders."""
import math

import pytest
import torch
from PIL import Image
from torchvision import transforms

from dataset import CIFAR100, CifarArrays, Draws, GPULoader, GPUTestLoader, Recipe, augment, build_torchvision_loaders
from dataset.constants import CIFAR100_MEAN, CIFAR100_STD

MEAN = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR100_STD).view(3, 1, 1)
NORMALIZE = transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)
PUBLISHED = transforms.Compose([  # the published code's training view
    transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), NORMALIZE,
])


def to_u8(x: torch.Tensor) -> torch.Tensor:
    """Undo normalisation (channels at dim -3): back to the 0..255 pixel values."""
    return ((x * STD + MEAN) * 255).round().to(torch.int64)


def test_apply_equals_the_published_torchvision_pipeline_for_the_same_draws():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 3, 32, 32), generator=g, dtype=torch.uint8)
    published, draws = [], []
    for k, image in enumerate(images):
        torch.manual_seed(k)
        published.append(PUBLISHED(Image.fromarray(image.permute(1, 2, 0).numpy())))
        # The same draws, replayed from the same RNG state in the order the pipeline takes them:
        # RandomCrop's row then column offset, then RandomHorizontalFlip's rand(1) < 0.5.
        torch.manual_seed(k)
        oy, ox = (int(torch.randint(0, 9, (1,))) for _ in range(2))
        draws.append((oy, ox, bool(torch.rand(1) < 0.5)))
    oy, ox, flip = (torch.tensor(d) for d in zip(*draws))
    assert set(oy.tolist()) == set(ox.tolist()) == set(range(9)) and set(flip.tolist()) == {False, True}
    out = CIFAR100.apply(CIFAR100.pad(images), torch.arange(200), Draws(oy, ox, flip))
    out_cl = CIFAR100.apply(CIFAR100.pad(images), torch.arange(200), Draws(oy, ox, flip), channels_last=True)
    assert out.dtype == torch.float32 and out.shape == (200, 3, 32, 32) and out.is_contiguous()
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, out_cl)
    torch.testing.assert_close(out, torch.stack(published), atol=1e-6, rtol=0)


def test_padding_is_black_before_normalisation():
    image = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    zero = torch.tensor([0])
    out = CIFAR100.apply(CIFAR100.pad(image), zero, Draws(zero, zero, torch.tensor([False])))[0]
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


def _loaders(kind: str, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> tuple[list, list]:
    """(one training epoch, the test batches) of the device loader or of the CPU loader, with `recipe`."""
    if kind == "device":
        train = GPULoader(images, labels, batch_size=8, n_views=2, device="cpu", recipe=recipe)
        train.set_epoch_seed(0)
        return list(train), list(GPUTestLoader(images, labels, batch_size=8, device="cpu", recipe=recipe))
    arrays = CifarArrays(images, labels, images, labels, [str(k) for k in range(10)])
    train, test = build_torchvision_loaders(arrays, 8, 2, 0, False, generator=torch.Generator(), recipe=recipe)
    return list(train), list(test)


@pytest.mark.parametrize("kind", ["device", "cpu"])
def test_a_changed_recipe_changes_both_loaders(kind):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (20, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(20) % 10
    # No padding (the crop is the whole image), always a flip, other statistics: each view is one known image.
    recipe = Recipe(padding=0, flip_p=1.0, mean=(0.25, 0.5, 0.75), std=(0.5, 0.25, 0.125))
    mean, std = torch.tensor(recipe.mean).view(3, 1, 1), torch.tensor(recipe.std).view(3, 1, 1)
    normalised = (images.double() / 255 - mean.double()) / std.double()
    train, test = _loaders(kind, images, labels, recipe)
    assert sum(len(y) for _, y, _ in train) == 20
    for views, _, index in train:
        for view in views:
            torch.testing.assert_close(view.double(), normalised[index].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([x for x, _ in test]).double(), normalised, atol=1e-5, rtol=0)
    # The published recipe gives other views, and other test images.
    train, test = _loaders(kind, images, labels, CIFAR100)
    assert not any(torch.allclose(v.double(), normalised[i].flip(-1), atol=1e-3) for vs, _, i in train for v in vs)
    assert not torch.allclose(torch.cat([x for x, _ in test]).double(), normalised, atol=1e-3)
