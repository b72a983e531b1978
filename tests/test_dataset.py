"""Data layer: safe CIFAR reading, demo data, CPU loaders and the on-device augmentation."""
import math
import pickle
import time

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision import transforms

from dataset import (
    DataError,
    GPULoader,
    GPUTestLoader,
    MultiViewCIFAR,
    augment,
    build_imagenet_loaders,
    build_torchvision_loaders,
    crop_flip_normalize,
    load_cifar100,
    make_tiny_cifar,
    write_demo_cifar,
    write_demo_imagefolder,
)
from dataset.constants import CIFAR100_MEAN, CIFAR100_STD

MEAN = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR100_STD).view(3, 1, 1)
NORMALIZE = transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def to_u8(x: torch.Tensor) -> torch.Tensor:
    """Undo normalisation (channels at dim -3): back to the 0..255 pixel values."""
    return ((x * STD + MEAN) * 255).round().to(torch.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_cifar(str(root), n_train=128, n_test=64, num_classes=10, seed=0)
    return root, load_cifar100(str(root))


# ---------------------------------------------------------------- reading CIFAR files
def test_generated_files_round_trip(tiny):
    root, arrays = tiny
    assert arrays.train_images.shape == (128, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.test_images.shape == (64, 3, 32, 32) and arrays.test_images.dtype == torch.uint8
    assert arrays.train_labels.dtype == torch.int64 and arrays.test_labels.shape == (64,)
    assert set(arrays.train_labels.tolist()) == set(range(10)) and arrays.test_labels.max() < 10
    assert len(arrays.classes) == 100 and len(set(arrays.classes)) == 100
    # Plain pickle gives the real files' structure, and the same pixels in channel-major rows.
    folder = root / "cifar-100-python"
    with open(folder / "train", "rb") as f:
        train = pickle.load(f, encoding="latin1")
    assert set(train) == {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"}
    assert train["data"].dtype == np.uint8 and train["data"].shape == (128, 3072)
    assert all(type(k) is int for k in train["fine_labels"]) and isinstance(train["batch_label"], str)
    assert isinstance(train["filenames"][0], str) and len(train["coarse_labels"]) == 128
    assert torch.equal(torch.from_numpy(train["data"]).view(-1, 3, 32, 32), arrays.train_images)
    assert train["fine_labels"] == arrays.train_labels.tolist()
    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert set(meta) == {"fine_label_names", "coarse_label_names"} and len(meta["fine_label_names"]) == 100
    assert (folder / "train").read_bytes()[:2] == b"\x80\x02"  # protocol 2, as the originals


def test_generator_is_deterministic(tmp_path):
    files = [make_tiny_cifar(str(tmp_path / str(i)), 16, 8, seed=seed) / "train" for i, seed in enumerate((0, 0, 1))]
    assert files[0].read_bytes() == files[1].read_bytes() != files[2].read_bytes()


def _write_split(tiny_root, tmp_path, train: dict):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("test", "meta"):
        (folder / name).write_bytes((tiny_root / "cifar-100-python" / name).read_bytes())
    with open(folder / "train", "wb") as f:
        pickle.dump(train, f, protocol=4)  # a modern protocol is read as well
    return folder / "train"


class Evil:
    """Unpickling this opens (creates) a file: stands for any code a tampered file could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_malicious_pickle_is_refused(tiny, tmp_path):
    marker = tmp_path / "pwned"

    # The payload works when unpickled normally...
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Evil(probe))).close()
    assert probe.exists()
    # ...but not through load_cifar100.
    path = _write_split(tiny[0], tmp_path, {"data": Evil(marker), "fine_labels": []})
    with pytest.raises(DataError) as err:
        load_cifar100(str(tmp_path))
    msg = one_line(err)
    assert str(path) in msg and "open' is not allowed" in msg
    assert not marker.exists()


@pytest.mark.parametrize("download", [False, True])
def test_missing_folder(tmp_path, monkeypatch, download):
    # No network: only the URL changes (a local port that refuses connections); torchvision's download runs.
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "url", "http://127.0.0.1:9/cifar-100-python.tar.gz")
    with pytest.raises(DataError) as err:
        load_cifar100(str(tmp_path / "data"), download=download)
    msg = one_line(err)
    assert str(tmp_path / "data" / "cifar-100-python") in msg and "http://127.0.0.1:9/" in msg


@pytest.mark.parametrize("data, labels, expected", [
    (np.zeros((4, 3000), np.uint8), [0, 1, 2, 3], ("3072", "3000")),  # wrong row length
    (np.zeros((2, 3072), np.uint8), [0, 100], ("0..99",)),  # label out of range
    (np.zeros((2, 3072), np.float32), [0, 1], ("uint8",)),
    (np.zeros((2, 3072), np.uint8), [0], ("2 images but 1",)),
])
def test_bad_contents(tiny, tmp_path, data, labels, expected):
    path = _write_split(tiny[0], tmp_path, {"data": data, "fine_labels": labels})
    with pytest.raises(DataError) as err:
        load_cifar100(str(tmp_path))
    msg = one_line(err)
    assert str(path) in msg and all(e in msg for e in expected)


def test_modern_pickle_reads(tiny, tmp_path):
    _write_split(tiny[0], tmp_path, {"data": np.full((2, 3072), 7, np.uint8), "fine_labels": [3, 4]})
    arrays = load_cifar100(str(tmp_path))
    assert arrays.train_labels.tolist() == [3, 4] and int(arrays.train_images.max()) == 7


# ---------------------------------------------------------------- on-device augmentation (run on CPU)
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


# ---------------------------------------------------------------- GPULoader (CPU device)
def _id_images(n: int):
    """Constant images whose channel-0 value is id+1 (the centre pixel is never padding)."""
    images = (torch.arange(n) + 1).view(n, 1, 1, 1).expand(n, 3, 32, 32).to(torch.uint8).clone()
    return images, torch.arange(n) % 7


def _ids(views):
    return to_u8(views[:, :, 16:17, 16:17])[:, 0, 0, 0] - 1


def _epoch(loader, seed):
    loader.set_epoch_seed(seed)
    return list(loader)


def test_gpu_loader_epoch():
    images, labels = _id_images(103)
    loader = GPULoader(images, labels, batch_size=16, n_views=3, device="cpu")
    batches = _epoch(loader, 5)
    assert len(loader) == len(batches) == 7 and [len(y) for _, y in batches] == [16] * 6 + [7]
    ids = []
    for views, y in batches:
        assert isinstance(views, list) and len(views) == 3
        assert all(v.shape == (len(y), 3, 32, 32) and v.dtype == torch.float32 for v in views)
        batch_ids = _ids(views[0])
        assert all(torch.equal(_ids(v), batch_ids) for v in views)  # views of the same images
        assert torch.equal(y, batch_ids % 7)  # labels match
        ids.append(batch_ids)
    ids = torch.cat(ids)
    assert torch.equal(ids.sort().values, torch.arange(103)) and not torch.equal(ids, torch.arange(103))
    # Views are independent: they differ somewhere (padding position).
    assert not torch.equal(batches[0][0][0], batches[0][0][1])
    # Same seed: same order and views; another seed: another order.
    same = _epoch(loader, 5)
    assert all(torch.equal(a, b) for (va, _), (vb, _) in zip(batches, same) for a, b in zip(va, vb))
    other = torch.cat([_ids(v[0]) for v, _ in _epoch(loader, 6)])
    assert not torch.equal(other, ids)


def test_gpu_loader_options():
    images, labels = _id_images(103)
    loader = GPULoader(images, labels, batch_size=16, n_views=2, device="cpu", drop_last=True, channels_last=True)
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == 6 and all(len(y) == 16 for _, y in batches)
    assert batches[0][0][1].is_contiguous(memory_format=torch.channels_last)
    ordered = GPULoader(images, labels, batch_size=50, n_views=1, device="cpu", shuffle=False)
    assert torch.equal(torch.cat([_ids(v[0]) for v, _ in _epoch(ordered, 0)]), torch.arange(103))


def test_gpu_loader_two_ranks_cover_the_data():
    images, labels = _id_images(103)
    ranks = [GPULoader(images, labels, 16, 1, "cpu", rank=r, world_size=2) for r in range(2)]
    per_rank = [torch.cat([_ids(v[0]) for v, _ in _epoch(loader, 3)]) for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 4 and [len(p) for p in per_rank] == [52, 52]
    assert set(torch.cat(per_rank).tolist()) == set(range(103))  # 104 = 103 + one repeat
    assert len(set(per_rank[0].tolist()) & set(per_rank[1].tolist())) <= 1


def test_gpu_test_loader_matches_torchvision(tiny):
    arrays = tiny[1]
    loader = GPUTestLoader(arrays.test_images, arrays.test_labels, batch_size=48, device="cpu")
    batches = list(loader)
    assert len(loader) == 2 and [len(y) for _, y in batches] == [48, 16]
    assert torch.equal(torch.cat([y for _, y in batches]), arrays.test_labels)
    ref = torch.stack([NORMALIZE(TF.to_tensor(Image.fromarray(im.permute(1, 2, 0).numpy()))) for im in arrays.test_images])
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- torchvision (CPU) path
def test_multiview_cifar_item():
    images = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    views, label = MultiViewCIFAR(images, torch.tensor([3, 1, 2, 0]), n_views=3)[0]
    assert label == 3 and isinstance(views, tuple) and len(views) == 3
    assert all(v.shape == (3, 32, 32) and v.dtype == torch.float32 for v in views)
    assert len({v.numpy().tobytes() for v in views}) > 1  # independent crops
    for v in views:  # every pixel is the image's value or black padding, normalised with CIFAR stats
        values = set(to_u8(v).flatten().tolist())
        assert values <= {0, 128} and to_u8(v)[:, 12:20, 12:20].eq(128).all()
    test_image, _ = MultiViewCIFAR(images, torch.zeros(4, dtype=torch.long), train=False)[1]
    torch.testing.assert_close(test_image, ((128 / 255 - MEAN) / STD).expand(3, 32, 32), atol=1e-6, rtol=0)


def test_torchvision_loaders(tiny):
    arrays = tiny[1]
    train, test = build_torchvision_loaders(arrays, batch_size=48, n_views=3, num_workers=0, pin_memory=False)
    batches = list(train)
    assert [len(y) for _, y in batches] == [48, 48, 32]  # last batch partial
    views, labels = batches[0]
    assert len(views) == 3 and all(v.shape == (48, 3, 32, 32) for v in views) and labels.dtype == torch.int64
    test_batches = list(test)
    assert [x.shape for x, _ in test_batches] == [(48, 3, 32, 32), (16, 3, 32, 32)]
    assert torch.equal(torch.cat([y for _, y in test_batches]), arrays.test_labels)  # not shuffled
    sampler = DistributedSampler(range(128), num_replicas=2, rank=0, shuffle=True, seed=0)
    train, _ = build_torchvision_loaders(arrays, 48, 3, 0, False, sampler=sampler)
    assert len(train) == 2


def test_torchvision_loader_workers_repeatable(tiny):
    train, _ = build_torchvision_loaders(tiny[1], batch_size=64, n_views=2, num_workers=2, pin_memory=False)

    def first_batch(seed):
        torch.manual_seed(seed)  # the global RNG state decides order and worker seeds
        views, labels = next(iter(train))
        return torch.cat(views), labels

    a, b, c = first_batch(123), first_batch(123), first_batch(124)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


# ---------------------------------------------------------------- demo data, ImageNet folders
def _logreg_accuracy(arrays, pool: int) -> float:
    """Test accuracy of logistic regression on pool x pool average-pooled pixels (LBFGS)."""
    feats = [torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, pool).flatten(1)
             for x in (arrays.train_images, arrays.test_images)]
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    xtr, xte = [(f - mu) / sd for f in feats]
    w, b = torch.zeros(xtr.shape[1], 10, requires_grad=True), torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, arrays.train_labels) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((xte @ w + b).argmax(1) == arrays.test_labels).float().mean().item()


def test_demo_data_is_learnable_not_trivial(tmp_path):
    start = time.perf_counter()
    write_demo_cifar(str(tmp_path), num_classes=10, train_per_class=500, test_per_class=100, seed=0)
    seconds = time.perf_counter() - start
    print(f"write_demo_cifar: 6000 images in {seconds:.2f} s")
    assert seconds < 6.0  # ~0.3-0.9 s measured; generous for loaded CI machines
    arrays = load_cifar100(str(tmp_path))
    assert arrays.train_images.shape[0] == 5000 and arrays.test_images.shape[0] == 1000

    pixels, mean_colour = _logreg_accuracy(arrays, 8), _logreg_accuracy(arrays, 1)
    print(f"logistic regression, 8x8 pixels: {pixels:.3f}; mean colour only: {mean_colour:.3f} (chance 0.1)")
    assert pixels > 0.3  # > 3x chance: learnable
    assert mean_colour < 0.3  # not separable by mean colour alone


def test_imagenet_loaders(tmp_path):
    write_demo_imagefolder(str(tmp_path), num_classes=3, per_class=4, size=64, seed=0)
    train, val = build_imagenet_loaders(str(tmp_path), batch_size=5, n_views=2, num_workers=0, pin_memory=False)
    views, labels = next(iter(train))
    assert len(views) == 2 and all(v.shape == (5, 3, 224, 224) for v in views) and labels.shape == (5,)
    images, labels = next(iter(val))
    assert images.shape == (5, 3, 224, 224) and len(train.dataset.classes) == 3
    with pytest.raises(DataError) as err:
        build_imagenet_loaders(str(tmp_path / "none"), 5, 2, 0, False)
    assert str(tmp_path / "none" / "train") in one_line(err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_path_on_cuda_matches_cpu_without_host_syncs():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), generator=g, dtype=torch.uint8)
    oy, ox = torch.randint(0, 9, (2, 300), generator=g)
    flip = torch.rand(300, generator=g) < 0.5
    cpu = crop_flip_normalize(images, oy, ox, flip)
    cuda = crop_flip_normalize(images.cuda(), oy.cuda(), ox.cuda(), flip.cuda(), channels_last=True)
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-6, rtol=0)
    ids, labels = _id_images(250)
    loader = GPULoader(ids, labels, batch_size=64, n_views=3, device="cuda")
    loader.set_epoch_seed(7)
    images_cuda, gen = images.cuda(), torch.Generator(device="cuda").manual_seed(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the epoch raises
    try:
        batches = list(loader)
        augment(images_cuda, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got = torch.cat([_ids(v[2].cpu()) for v, _ in batches])
    assert torch.equal(got.sort().values, torch.arange(250))
    assert torch.equal(torch.cat([y.cpu() for _, y in batches]), got % 7)
