"""Reading CIFAR-100 files: the real pickle format, the restricted unpickler, one-line errors, the download path."""
import pickle

import numpy as np
import pytest
import torchvision

from dataset import DataError, load_cifar100, make_tiny_cifar


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_cifar(str(root), n_train=128, n_test=64, num_classes=10, seed=0)
    return root, load_cifar100(str(root))


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
