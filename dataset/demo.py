"""Synthetic CIFAR-100-format data for demos and tests (no download needed).

Each class is a distinct combination of shape (7), colour (5) and texture (3): 105 combinations,
enough for all 100 CIFAR classes. Shapes, colours and textures are each shared between classes,
so no single cue (mean colour, say) separates them; per-image position, size and rotation
jitter, a random background colour and pixel noise keep the task from being trivial while a
small CNN still learns it. Generation is vectorised numpy and deterministic for a seed.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dataset.cifar import _np_reconstruct  # the same reconstruction global the loader allows
from dataset.constants import CIFAR_FOLDER, CIFAR_IMAGE_SIZE, CIFAR_NUM_CLASSES

_DARK = 0.45  # texture contrast: the pattern's "off" pixels take this fraction of the colour
SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "bar")
COLOURS = ("red", "green", "blue", "yellow", "magenta")
TEXTURES = ("solid", "stripes", "checker")
_PALETTE = np.array(
    [[0.90, 0.15, 0.10], [0.15, 0.80, 0.20], [0.15, 0.30, 0.95], [0.95, 0.85, 0.10], [0.85, 0.20, 0.85]],
    dtype=np.float32,
)

# Shape masks in the object's own frame (u right, v down, object radius 1).
_SHAPE_FNS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda u, v: u * u + v * v < 1.0,
    lambda u, v: np.maximum(np.abs(u), np.abs(v)) < 0.8,
    lambda u, v: (v < 0.7) & (np.abs(u) < (v + 0.95) * 0.62),
    lambda u, v: ((u * u + v * v) < 1.0) & ((u * u + v * v) > 0.36),
    lambda u, v: ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95)),
    lambda u, v: np.abs(u) + np.abs(v) < 1.0,
    lambda u, v: (np.abs(u) < 1.0) & (np.abs(v) < 0.4),
)


def class_attributes(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape, colour and texture ids of each class (CRT on 7, 5, 3: distinct for labels < 105)."""
    return label % len(SHAPES), label % len(COLOURS), label % len(TEXTURES)


def class_names(num_classes: int = CIFAR_NUM_CLASSES) -> list[str]:
    """Readable names such as 'red_solid_disc' for the first `num_classes` classes."""
    s, c, t = class_attributes(np.arange(num_classes))
    return [f"{COLOURS[ci]}_{TEXTURES[ti]}_{SHAPES[si]}" for si, ci, ti in zip(s, c, t)]


def _object_frame(n: int, size: int, rng: np.random.Generator, r_lo: float, r_hi: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image object coordinates (random centre, radius, rotation): u, v arrays N x size x size."""
    f32 = np.float32
    cy, cx = (rng.uniform(0.25, 0.75, (2, n)) * size).astype(f32)
    radius = (rng.uniform(r_lo, r_hi, n) * size).astype(f32)
    angle = rng.uniform(-np.pi / 5, np.pi / 5, n).astype(f32)
    grid = np.arange(size, dtype=f32) + 0.5
    dy = (grid[None, :, None] - cy[:, None, None]) / radius[:, None, None]
    dx = (grid[None, None, :] - cx[:, None, None]) / radius[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    return cos * dx + sin * dy, cos * dy - sin * dx


def _draw(shape_id: np.ndarray, texture_id: np.ndarray, u: np.ndarray, v: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the object and of its texture's "on" pixels; loops over the few ids, not images."""
    n = u.shape[0]
    mask = np.zeros(u.shape, dtype=bool)
    for s, fn in enumerate(_SHAPE_FNS):
        sel = shape_id == s
        if sel.any():
            mask[sel] = fn(u[sel], v[sel])
    phase = rng.uniform(0.0, 2.0, (2, n)).astype(np.float32)[..., None, None]
    freq = rng.uniform(1.3, 1.9, n).astype(np.float32)[:, None, None]
    on = np.ones(u.shape, dtype=bool)
    sel = texture_id == 1  # stripes across the object's own axis
    on[sel] = np.sin(np.pi * (2.0 * u[sel] * freq[sel] + phase[0, sel])) > 0
    sel = texture_id == 2  # checkerboard
    cu = np.floor(u[sel] * freq[sel] + phase[0, sel]).astype(np.int32)
    cv = np.floor(v[sel] * freq[sel] + phase[1, sel]).astype(np.int32)
    on[sel] = ((cu + cv) & 1) == 0
    return mask, on


def render_images(labels: np.ndarray, rng: np.random.Generator, size: int = CIFAR_IMAGE_SIZE) -> np.ndarray:
    """Render one image per label: uint8 array N x size x size x 3 (HWC).

    Each image: random background colour, a smaller distractor object of random shape, texture
    and colour, then the class object (its shape, colour with jitter, texture) on top, then noise.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    f32 = np.float32
    shape_id, colour_id, texture_id = class_attributes(labels)
    fg = np.clip(_PALETTE[colour_id] + rng.normal(0.0, 0.12, (n, 3)).astype(f32), 0.0, 1.0)
    du, dv = _object_frame(n, size, rng, 0.14, 0.26)
    d_mask, d_on = _draw(rng.integers(0, len(SHAPES), n), rng.integers(0, len(TEXTURES), n), du, dv, rng)
    u, v = _object_frame(n, size, rng, 0.16, 0.32)
    mask, on = _draw(shape_id, texture_id, u, v, rng)
    # Per-image colour table (background, distractor on/off, object on/off), indexed per pixel.
    table = np.empty((n, 5, 3), dtype=f32)
    table[:, 0] = rng.uniform(0.0, 1.0, (n, 3))
    # Half the distractors take a (jittered) class colour, so colour alone does not give the class.
    d_colour = _PALETTE[rng.integers(0, len(COLOURS), n)] + rng.normal(0.0, 0.12, (n, 3)).astype(f32)
    table[:, 1] = np.where(rng.random((n, 1)) < 0.5, np.clip(d_colour, 0.0, 1.0), rng.uniform(0.0, 1.0, (n, 3)))
    table[:, 2] = table[:, 1] * _DARK
    table[:, 3] = fg
    table[:, 4] = fg * _DARK
    index = np.where(mask, np.where(on, 3, 4), np.where(d_mask, np.where(d_on, 1, 2), 0)).astype(np.int64)
    index += 5 * np.arange(n)[:, None, None]
    img = table.reshape(-1, 3)[index]
    noise = rng.random(img.shape, dtype=f32)  # uniform pixel noise in +-0.25
    noise -= 0.5
    noise *= 0.5
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return img.astype(np.uint8)


class _Py2StylePickler(pickle.Pickler):
    """Write numpy arrays the way the Python-2 originals hold them: raw bytes as a latin1 string.

    Python 3 would otherwise pickle the bytes through `_codecs.encode` at protocol 2, a global
    the originals do not use and our safe loader does not allow.
    """

    def reducer_override(self, obj: object) -> object:
        if type(obj) is np.ndarray:
            arr = np.ascontiguousarray(obj)
            state = (1, arr.shape, arr.dtype, False, arr.tobytes().decode("latin1"))
            return _np_reconstruct, (np.ndarray, (0,), "b"), state
        return NotImplemented


def _dump(obj: dict[str, object], path: Path) -> None:
    with open(path, "wb") as f:
        _Py2StylePickler(f, protocol=2).dump(obj)  # protocol 2, as the original files


def _split_dict(labels: np.ndarray, images_hwc: np.ndarray, names: list[str], batch_label: str) -> dict[str, object]:
    rows = np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2))
    data = rows.reshape(len(labels), 3 * CIFAR_IMAGE_SIZE**2)  # channel-major rows (also for an empty split)
    return {
        "filenames": [f"{names[k]}_s_{i:06d}.png" for i, k in enumerate(labels)],
        "batch_label": batch_label,
        "fine_labels": [int(k) for k in labels],
        "coarse_labels": [int(k) // 5 for k in labels],
        "data": data,
    }


def _balanced_labels(count: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(count) % num_classes)


def _write_cifar(data_folder: str, train_labels: np.ndarray, test_labels: np.ndarray, rng: np.random.Generator) -> Path:
    folder = Path(data_folder).expanduser() / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = class_names(CIFAR_NUM_CLASSES)  # the format always has 100 fine classes
    train = render_images(train_labels, rng)
    test = render_images(test_labels, rng)
    _dump(_split_dict(train_labels, train, names, "training batch 1 of 1"), folder / "train")
    _dump(_split_dict(test_labels, test, names, "testing batch 1 of 1"), folder / "test")
    coarse = [f"group_{i:02d}" for i in range(CIFAR_NUM_CLASSES // 5)]
    _dump({"fine_label_names": names, "coarse_label_names": coarse}, folder / "meta")
    return folder


def make_tiny_cifar(data_folder: str, n_train: int = 128, n_test: int = 64, num_classes: int = 10, seed: int = 0
                    ) -> Path:
    """A few images in the real format, for fast tests (counts need not divide by num_classes)."""
    rng = np.random.default_rng(seed)
    train_labels = _balanced_labels(n_train, num_classes, rng)
    return _write_cifar(data_folder, train_labels, _balanced_labels(n_test, num_classes, rng), rng)


def write_demo_cifar(data_folder: str, num_classes: int = 10, train_per_class: int = 500, test_per_class: int = 100,
                     seed: int = 0) -> Path:
    """Write `<data_folder>/cifar-100-python/{train,test,meta}` using the first `num_classes` labels."""
    if not 1 <= num_classes <= CIFAR_NUM_CLASSES:
        raise ValueError(f"num_classes must be in 1..{CIFAR_NUM_CLASSES}, got {num_classes}")
    return make_tiny_cifar(data_folder, num_classes * train_per_class, num_classes * test_per_class, num_classes, seed)


def write_demo_imagefolder(folder: str, num_classes: int = 3, per_class: int = 8, size: int = 64, seed: int = 0
                           ) -> Path:
    """A tiny ImageFolder tree (`train/` and `val/`, one sub-folder per class, PNG files)."""
    from PIL import Image

    root = Path(folder).expanduser()
    rng = np.random.default_rng(seed)
    names = class_names(num_classes)
    for split in ("train", "val"):
        labels = np.repeat(np.arange(num_classes), per_class)
        images = render_images(labels, rng, size=size)
        for i, (k, img) in enumerate(zip(labels, images)):
            out = root / split / names[k]
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(out / f"{split}_{i:05d}.png")
    return root
