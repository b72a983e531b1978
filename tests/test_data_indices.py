"""Every training batch carries its samples' positions in the training set (per-sample memories such as CRD's
are indexed by them): through both CIFAR loaders, trial groups, torchrun's sharding and the ImageNet loader."""
import pytest
import torch

from dataset import CifarArrays, build_torchvision_loaders, load_cifar100, make_tiny_cifar, write_demo_imagefolder
from engine.data import build_data

N_TRAIN = 99  # one label per image (100 classes), so a label names its image; 99: a partial last batch, and
# two ranks that need one repeated index


@pytest.fixture(scope="module")
def unique_labels(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("unique")
    make_tiny_cifar(str(root), n_train=N_TRAIN, n_test=20, num_classes=100, seed=0)
    return str(root)


def _options(folder: str, **extra) -> dict:
    return {"dataset": "cifar100", "data_folder": folder, "download": False, "n_cls": 100, "batch_size": 16,
            "num_workers": 0, "pin_memory": False, "distill": "cocord", **extra}


def _epoch(batches, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, labels) of one epoch, concatenated along the batch dimension ([trials, n] when stacked)."""
    batches.set_epoch(seeds)
    index, labels = [], []
    for views, y, i in batches:
        assert i.dtype == torch.int64 and i.shape == y.shape == views[0].shape[: y.dim()]
        index.append(i)
        labels.append(y)
    return torch.cat(index, dim=-1), torch.cat(labels, dim=-1)


@pytest.mark.parametrize("trials", [1, 2])
@pytest.mark.parametrize("loader", ["gpu", "torchvision"])
def test_each_index_once_per_epoch_with_its_label(unique_labels, loader, trials):
    batches, _ = build_data(_options(unique_labels), 2, torch.device("cpu"), loader, trials=trials)
    assert batches.n_data == N_TRAIN
    train_labels = load_cifar100(unique_labels).train_labels
    index, labels = _epoch(batches, [5, 6][:trials])
    assert index.shape == ((trials, N_TRAIN) if trials > 1 else (N_TRAIN,))
    for mine, theirs in zip(index.view(trials, -1), labels.view(trials, -1)):
        assert torch.equal(mine.sort().values, torch.arange(N_TRAIN))
        assert torch.equal(theirs, train_labels[mine])
    if trials == 2:  # each trial its own order
        assert not torch.equal(index[0], index[1])


@pytest.mark.parametrize("loader", ["gpu", "torchvision"])
def test_two_ranks_indices_cover_the_training_set(unique_labels, loader):
    per_rank = []
    for rank in range(2):
        batches, _ = build_data(_options(unique_labels), 1, torch.device("cpu"), loader,
                                rank=rank, world_size=2)
        assert batches.n_data == N_TRAIN  # the whole set's size, not a rank's share
        per_rank.append(_epoch(batches, [3])[0])
    assert [len(p) for p in per_rank] == [50, 50]  # 100 = 99 + one index repeated, as DistributedSampler pads
    assert set(torch.cat(per_rank).tolist()) == set(range(N_TRAIN))
    assert len(set(per_rank[0].tolist()) & set(per_rank[1].tolist())) <= 1


def test_cpu_loader_views_labels_and_index_are_of_one_image():
    """Constant images whose value is their index + 1: every view of a sample is of the image its index names."""
    images = (torch.arange(40) + 1).view(40, 1, 1, 1).expand(40, 3, 32, 32).to(torch.uint8).clone()
    labels = torch.arange(40) % 7
    arrays = CifarArrays(images, labels, images, labels, [str(k) for k in range(7)])
    train, _ = build_torchvision_loaders(arrays, 16, 3, 0, False, generator=torch.Generator())
    seen = []
    for views, y, index in train:
        for view in views:  # the centre pixel is never padding; undo the normalisation of channel 0
            value = (view[:, 0, 16, 16] * 0.2675 + 0.5071) * 255
            assert torch.equal(value.round().to(torch.int64) - 1, index)
        assert torch.equal(y, labels[index])
        seen.append(index)
    assert sorted(torch.cat(seen).tolist()) == list(range(40))


def test_imagenet_batches_carry_indices(tmp_path):
    write_demo_imagefolder(str(tmp_path), num_classes=3, per_class=3, size=40, seed=0)
    opt = {**_options(str(tmp_path)), "dataset": "imagenet", "batch_size": 4}
    batches, _ = build_data(opt, 1, torch.device("cpu"), "torchvision", trials=2)
    assert batches.n_data == 9
    index, labels = _epoch(batches, [1, 2])
    targets = torch.tensor(batches.loaders[0].loader.dataset.targets)
    for mine, theirs in zip(index, labels):
        assert torch.equal(mine.sort().values, torch.arange(9)) and torch.equal(theirs, targets[mine])
