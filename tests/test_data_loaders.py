"""The loaders: GPULoader / GPUTestLoader (on the CPU, and on CUDA where present), torchvision's, ImageNet's."""
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DistributedSampler, SequentialSampler
from torchvision import transforms

from dataset import (
    CIFAR100,
    DataError,
    Draws,
    GPULoader,
    GPUTestLoader,
    MultiViewCIFAR,
    augment,
    build_imagenet_loaders,
    build_torchvision_loaders,
    load_cifar100,
    make_tiny_cifar,
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
    assert len(loader) == len(batches) == 7 and [len(y) for _, y, _ in batches] == [16] * 6 + [7]
    ids = []
    for views, y, index in batches:
        assert isinstance(views, list) and len(views) == 3
        assert all(v.shape == (len(y), 3, 32, 32) and v.dtype == torch.float32 for v in views)
        batch_ids = _ids(views[0])
        assert all(torch.equal(_ids(v), batch_ids) for v in views)  # views of the same images
        assert torch.equal(y, batch_ids % 7) and torch.equal(index, batch_ids)  # labels and indices match
        ids.append(batch_ids)
    ids = torch.cat(ids)
    assert torch.equal(ids.sort().values, torch.arange(103)) and not torch.equal(ids, torch.arange(103))
    # Views are independent: they differ somewhere (padding position).
    assert not torch.equal(batches[0][0][0], batches[0][0][1])
    # Same seed: same order and views; another seed: another order.
    assert _same_batches(batches, _epoch(loader, 5))
    other = torch.cat([_ids(v[0]) for v, _, _ in _epoch(loader, 6)])
    assert not torch.equal(other, ids)


def test_gpu_loader_options():
    images, labels = _id_images(103)
    loader = GPULoader(images, labels, batch_size=16, n_views=2, device="cpu", drop_last=True, channels_last=True)
    batches = _epoch(loader, 0)
    assert len(loader) == len(batches) == 6 and all(len(y) == 16 for _, y, _ in batches)
    assert batches[0][0][1].is_contiguous(memory_format=torch.channels_last)
    ordered = GPULoader(images, labels, batch_size=50, n_views=1, device="cpu", shuffle=False)
    assert torch.equal(torch.cat([_ids(v[0]) for v, _, _ in _epoch(ordered, 0)]), torch.arange(103))


def test_gpu_loader_two_ranks_cover_the_data():
    images, labels = _id_images(103)
    ranks = [GPULoader(images, labels, 16, 1, "cpu", rank=r, world_size=2) for r in range(2)]
    per_rank = [torch.cat([_ids(v[0]) for v, _, _ in _epoch(loader, 3)]) for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 4 and [len(p) for p in per_rank] == [52, 52]
    assert set(torch.cat(per_rank).tolist()) == set(range(103))  # 104 = 103 + one repeat
    assert len(set(per_rank[0].tolist()) & set(per_rank[1].tolist())) <= 1


def _same_batches(a, b) -> bool:
    """Bit-for-bit equal epochs: labels, indices, number of views, every view tensor and its memory format."""
    return len(a) == len(b) and all(
        torch.equal(ya, yb) and torch.equal(ia, ib) and len(va) == len(vb)
        and all(torch.equal(x, y) and x.stride() == y.stride() for x, y in zip(va, vb))
        for (va, ya, ia), (vb, yb, ib) in zip(a, b)
    )


@pytest.mark.parametrize("options", [
    {},
    {"drop_last": True, "channels_last": True, "rank": 1, "world_size": 2},
    {"shuffle": False},
])
def test_gpu_loader_siblings_share_the_data_and_match_fresh_loaders(options):
    images, labels = _id_images(103)
    first = GPULoader(images, labels, batch_size=16, n_views=2, device="cpu", **options)
    first.set_epoch_seed(99)
    list(first)  # a used loader: its siblings must not inherit its generator's state
    group = [first, first.sibling(), first.sibling()]
    settings = ("batch_size", "n_views", "shuffle", "drop_last", "channels_last", "rank", "world_size", "device")
    for twin in group[1:]:
        assert twin._padded.data_ptr() == first._padded.data_ptr()  # one copy of the padded set...
        assert twin._labels.data_ptr() == first._labels.data_ptr()  # ...and of the labels
        assert twin.generator is not first.generator and len(twin) == len(first)
        assert all(getattr(twin, k) == getattr(first, k) for k in settings)
    # Unseeded, a sibling starts where a new loader starts.
    fresh = GPULoader(images, labels, batch_size=16, n_views=2, device="cpu", **options)
    assert _same_batches(list(group[1]), list(fresh))
    # Each seeded for the epoch and drawn in lockstep, as trials stepping together would: each one's
    # epoch is exactly a fresh loader's with its seed, whatever the others draw in between.
    seeds = (5, 6, 7)
    for loader, seed in zip(group, seeds):
        loader.set_epoch_seed(seed)
    epochs = [list(e) for e in zip(*zip(*group))]
    for epoch, seed in zip(epochs, seeds):
        assert _same_batches(epoch, _epoch(GPULoader(images, labels, 16, 2, "cpu", **options), seed))
    assert not torch.equal(epochs[1][0][0][0], epochs[2][0][0][0])  # another seed, other views

def test_gpu_test_loader_matches_torchvision(tiny):
    arrays = tiny[1]
    loader = GPUTestLoader(arrays.test_images, arrays.test_labels, batch_size=48, device="cpu")
    batches = list(loader)
    assert len(loader) == 2 and [len(y) for _, y in batches] == [48, 16]
    assert torch.equal(torch.cat([y for _, y in batches]), arrays.test_labels)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in arrays.test_images]
    ref = torch.stack([NORMALIZE(TF.to_tensor(im)) for im in pil])
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- torchvision (CPU) path
def test_multiview_cifar_item():
    images = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    views, label, index = MultiViewCIFAR(images, torch.tensor([3, 1, 2, 0]), n_views=3)[2]
    assert label == 2 and index == 2 and isinstance(views, tuple) and len(views) == 3
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
    assert [len(y) for _, y, _ in batches] == [48, 48, 32]  # last batch partial
    views, labels, index = batches[0]
    assert len(views) == 3 and all(v.shape == (48, 3, 32, 32) for v in views) and labels.dtype == torch.int64
    assert index.dtype == torch.int64 and torch.equal(labels, arrays.train_labels[index])
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
        views, labels, _ = next(iter(train))
        return torch.cat(views), labels

    a, b, c = first_batch(123), first_batch(123), first_batch(124)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_torchvision_loader_epoch_comes_from_its_generator(tiny, num_workers):
    g = torch.Generator()
    common = dict(batch_size=48, n_views=2, num_workers=num_workers, pin_memory=False, generator=g)
    shuffled, _ = build_torchvision_loaders(tiny[1], **common)
    in_order, _ = build_torchvision_loaders(tiny[1], **common, sampler=SequentialSampler(range(128)))

    def epoch(loader, seed: int, global_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(global_seed)  # once the loader has a generator, the global RNG must not matter
        g.manual_seed(seed)
        before = torch.get_rng_state()
        batches = [(torch.cat(views), labels) for views, labels, _ in loader]
        assert torch.equal(torch.get_rng_state(), before)  # nor be used or advanced by the epoch
        return torch.cat([v for v, _ in batches]), torch.cat([y for _, y in batches])

    views, labels = epoch(shuffled, 5, global_seed=0)
    assert views.shape == (2 * 128, 3, 32, 32) and labels.shape == (128,)
    again = epoch(shuffled, 5, global_seed=1)
    assert torch.equal(labels, again[1]) and torch.equal(views, again[0])  # same order, same views
    assert not torch.equal(labels, epoch(shuffled, 6, global_seed=0)[1])  # another seed, another order
    # With the order fixed by the sampler, the views still follow the seed (the augmentation, not only the shuffle).
    views, labels = epoch(in_order, 5, global_seed=0)
    again, other = epoch(in_order, 5, global_seed=1), epoch(in_order, 6, global_seed=0)
    assert torch.equal(labels, tiny[1].train_labels) and torch.equal(other[1], labels)
    assert torch.equal(views, again[0]) and not torch.equal(views, other[0])

# ---------------------------------------------------------------- ImageNet folders
def test_imagenet_loaders(tmp_path):
    write_demo_imagefolder(str(tmp_path), num_classes=3, per_class=4, size=64, seed=0)
    train, val = build_imagenet_loaders(str(tmp_path), batch_size=5, n_views=2, num_workers=0, pin_memory=False)
    views, labels, index = next(iter(train))
    assert len(views) == 2 and all(v.shape == (5, 3, 224, 224) for v in views) and labels.shape == (5,)
    assert index.dtype == torch.int64 and labels.tolist() == [train.dataset.targets[i] for i in index]
    images, labels = next(iter(val))
    assert images.shape == (5, 3, 224, 224) and len(train.dataset.classes) == 3
    with pytest.raises(DataError) as err:
        build_imagenet_loaders(str(tmp_path / "none"), 5, 2, 0, False)
    assert str(tmp_path / "none" / "train") in one_line(err)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_path_on_cuda_matches_cpu_without_host_syncs():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), generator=g, dtype=torch.uint8)
    oy, ox = torch.randint(0, 9, (2, 300), generator=g)
    flip = torch.rand(300, generator=g) < 0.5
    cpu = CIFAR100.apply(CIFAR100.pad(images), torch.arange(300), Draws(oy, ox, flip))
    on_cuda = [t.cuda() for t in (images, oy, ox, flip)]
    cuda = CIFAR100.apply(CIFAR100.pad(on_cuda[0]), torch.arange(300).cuda(), Draws(*on_cuda[1:]), channels_last=True)
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-6, rtol=0)
    ids, labels = _id_images(250)
    loader = GPULoader(ids, labels, batch_size=64, n_views=3, device="cuda")
    loader.set_epoch_seed(7)
    twin = loader.sibling()  # a second trial's loader over the same device tensors
    twin.set_epoch_seed(7)
    images_cuda, gen = images.cuda(), torch.Generator(device="cuda").manual_seed(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the epoch raises
    try:
        batches = list(loader)
        twin_batches = list(twin)
        augment(images_cuda, gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert twin._padded.data_ptr() == loader._padded.data_ptr()
    assert _same_batches(batches, twin_batches)
    got = torch.cat([_ids(v[2].cpu()) for v, _, _ in batches])
    assert torch.equal(got.sort().values, torch.arange(250))
    assert torch.equal(torch.cat([y.cpu() for _, y, _ in batches]), got % 7)
    assert torch.equal(torch.cat([i.cpu() for _, _, i in batches]), got)
