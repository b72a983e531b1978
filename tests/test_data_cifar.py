"""Reading CIFAR-100 files: the real pickle format, the restricted unpickler, one-line errors, the download path."""
import pickle

import numpy as np
import pytest
import torchvision
from helpers import run_main, tiny_options, write_yaml

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


def _write_split_labels(path, labels):
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((len(labels), 3072), np.uint8), "fine_labels": labels}, f, protocol=4)


def test_label_range_follows_the_files_class_list(tiny, tmp_path):
    # The bound is the meta file's class count, not a fixed 100: a 20-class file accepts 19 and refuses 20.
    path = _write_split(tiny[0], tmp_path, {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 19]})
    with open(path.parent / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(20)]}, f, protocol=4)
    assert load_cifar100(str(tmp_path)).num_classes == 20
    _write_split_labels(path, [0, 20])
    with pytest.raises(DataError) as err:
        load_cifar100(str(tmp_path))
    msg = one_line(err)
    assert str(path) in msg and "0..19" in msg and "0..20" in msg


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_is_refused(tmp_path, split):
    # The project's own writer makes a real-format file whose split has no rows.
    counts = {"n_train": 0, "n_test": 8} if split == "train" else {"n_train": 8, "n_test": 0}
    folder = make_tiny_cifar(str(tmp_path), **counts)
    with open(folder / split, "rb") as f:
        assert pickle.load(f, encoding="latin1")["data"].shape == (0, 3072)
    with pytest.raises(DataError) as err:
        load_cifar100(str(tmp_path))
    assert one_line(err) == f"{folder / split} holds no images"


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_stops_a_run_before_it_writes(tmp_path, split):
    counts = {"n_train": 0, "n_test": 8} if split == "train" else {"n_train": 8, "n_test": 0}
    folder = make_tiny_cifar(str(tmp_path / "data"), **counts)
    options = tiny_options(str(tmp_path / "data"), None, distill="none", epochs=1)
    done = run_main(["-opt", write_yaml(tmp_path / "opt.yml", options)], tmp_path, timeout=120)
    # Exit status 2 and one line, as for every bad input; no experiments folder was created.
    assert done.returncode == 2 and done.stderr == f"error: {folder / split} holds no images\n", done.stderr
    assert not (tmp_path / "experiments").exists()
