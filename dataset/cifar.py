"""Read CIFAR-100 in its `cifar-100-python` pickle format, safely.

Real and generated files go through the same code: we unpickle them ourselves with an
unpickler that can only rebuild numpy arrays, so a tampered data file cannot run code.
torchvision's CIFAR100 class is not used for reading because it md5-checks every file,
which generated test data cannot pass; its download helper is used for downloading.
"""
from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset.constants import CIFAR_FOLDER, CIFAR_IMAGE_SIZE

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

_ROW_LENGTH = 3 * CIFAR_IMAGE_SIZE * CIFAR_IMAGE_SIZE  # 3072, channel-major

# The only globals a CIFAR pickle needs: numpy's array reconstruction. Python-2 era files name
# numpy.core, files written by numpy 2 name numpy._core; both map to the objects imported here
# (not imported by name at load time), and everything else is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class DataError(ValueError):
    """A data problem the user can fix; the message is one line that says what and where."""


@dataclass(frozen=True)
class CifarArrays:
    """CIFAR-100 as tensors: images uint8 N x 3 x 32 x 32, labels int64 N."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-rebuilding globals."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR file") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR file")


def safe_unpickle(path: Path) -> Any:
    """Unpickle a CIFAR file (latin1, as the Python-2 originals need) with the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # any unpickling failure is a bad file, reported on one line
        msg = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path} is not a valid CIFAR-100 pickle file: {msg}") from None


def _read_split(path: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict with 'data' and 'fine_labels'")
    for key in ("data", "fine_labels"):
        if key not in obj:
            raise DataError(f"{path} has no '{key}' entry")
    data, labels = obj["data"], obj["fine_labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 N x {_ROW_LENGTH} array, found {what}")
    if data.shape[0] == 0:  # caught here, before a run creates its folder, not as an empty epoch later
        raise DataError(f"{path} holds no images")
    if data.shape[1] != _ROW_LENGTH:
        raise DataError(f"{path}: each row of 'data' must hold {_ROW_LENGTH} bytes (3x32x32), found {data.shape[1]}")
    try:
        labels_np = np.asarray(labels)
    except Exception:
        raise DataError(f"{path}: 'fine_labels' is not a list of integers") from None
    if labels_np.ndim != 1 or not (labels_np.size == 0 or np.issubdtype(labels_np.dtype, np.integer)):
        raise DataError(f"{path}: 'fine_labels' is not a list of integers")
    if labels_np.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels_np.shape[0]} fine labels")
    if labels_np.min() < 0 or labels_np.max() >= num_classes:  # not empty: as many as the images
        raise DataError(f"{path}: fine labels must lie in 0..{num_classes - 1}, found "
                        f"{labels_np.min()}..{labels_np.max()}")
    images = torch.from_numpy(data.reshape(-1, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels_np.astype(np.int64))


def _read_classes(path: Path) -> list[str]:
    obj = safe_unpickle(path)
    names = obj.get("fine_label_names") if isinstance(obj, dict) else None
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a dict with a non-empty 'fine_label_names' list of strings")
    return list(names)


def _download(data_root: Path, folder: Path) -> None:
    """Download and unpack with torchvision's own helper and checksum (values from its CIFAR100 class)."""
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    created = not os.path.exists(data_root)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # torchvision sets none: a silent network would hang the run forever
    try:
        data_root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(CIFAR100.url, str(data_root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5)
    except Exception as err:  # network down, refused, corrupted archive...: one actionable line
        partial = data_root / CIFAR100.filename
        if os.path.isfile(partial) and not os.path.exists(folder):
            partial.unlink()
        if created and os.path.isdir(data_root) and not any(data_root.iterdir()):
            data_root.rmdir()  # leave nothing behind from a failed attempt
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"could not download CIFAR-100 ({reason}); put the '{CIFAR_FOLDER}' folder at {folder} "
                        f"(unpack {CIFAR100.url} there)") from None
    finally:
        socket.setdefaulttimeout(previous)
    if not folder.is_dir():
        raise DataError(f"the download did not produce {folder}; unpack {CIFAR100.url} into {data_root}")


def load_cifar100(data_folder: str, download: bool = False) -> CifarArrays:
    """Load `<data_folder>/cifar-100-python/{train,test,meta}`; download it first if asked and absent."""
    data_root = Path(data_folder).expanduser()
    folder = data_root / CIFAR_FOLDER
    # os.path's tests answer False where pathlib's raise (a name longer than the file system takes, a folder it
    # may not search): such a folder is not found, in one line.
    if not os.path.isdir(folder):
        if not download:
            from torchvision.datasets import CIFAR100

            raise DataError(f"CIFAR-100 not found: put the '{CIFAR_FOLDER}' folder at {folder} "
                            f"(unpack {CIFAR100.url} there), or allow the download")
        _download(data_root, folder)
    for name in ("train", "test", "meta"):
        if not os.path.isfile(folder / name):
            raise DataError(f"{folder} has no '{name}' file; it should hold train, test and meta")
    classes = _read_classes(folder / "meta")
    train_images, train_labels = _read_split(folder / "train", len(classes))
    test_images, test_labels = _read_split(folder / "test", len(classes))
    return CifarArrays(train_images, train_labels, test_images, test_labels, classes)
