"""Generated data: the cifar-100-python files the demo and the tests write, and how learnable they are."""
import pickle

import numpy as np
import pytest
import torch

from dataset import load_cifar100, make_tiny_cifar, write_demo_cifar


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_cifar(str(root), n_train=128, n_test=64, num_classes=10, seed=0)
    return root, load_cifar100(str(root))


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
    write_demo_cifar(str(tmp_path), num_classes=10, train_per_class=500, test_per_class=100, seed=0)
    arrays = load_cifar100(str(tmp_path))
    assert arrays.train_images.shape[0] == 5000 and arrays.test_images.shape[0] == 1000

    pixels, mean_colour = _logreg_accuracy(arrays, 8), _logreg_accuracy(arrays, 1)
    print(f"logistic regression, 8x8 pixels: {pixels:.3f}; mean colour only: {mean_colour:.3f} (chance 0.1)")
    assert pixels > 0.3  # > 3x chance: learnable
    assert mean_colour < 0.3  # not separable by mean colour alone
