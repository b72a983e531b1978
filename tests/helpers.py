"""Shared test helpers: the fixtures' deterministic weight rule, the reference input, CRD-style saves."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from conftest import FIXTURES
from torch import Tensor, nn


@cache
def architectures_fixture() -> dict[str, Any]:
    """The parsed fixtures/architectures.json (read once per session)."""
    with open(FIXTURES / "architectures.json") as f:
        return json.load(f)


def fixture_weight(key: str, shape: Sequence[int], salt: int = 0) -> Tensor:
    """The value fixtures/README.md assigns to state_dict entry `key` (float32).

    `salt` is the JSON's "salt" field (0), used as crc32's start value; 0 is plain crc32 as the README says.
    """
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode(), salt))
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    last = key.rsplit(".", 1)[-1]
    if last == "num_batches_tracked":
        value = torch.zeros(shape, dtype=torch.float64)
    elif last == "running_var":
        value = 1 + 0.1 * z.abs()
    elif last in ("running_mean", "bias"):
        value = 0.1 * z
    elif len(shape) == 1:  # BatchNorm weight
        value = 1 + 0.1 * z
    else:  # conv / linear weight
        value = z * math.sqrt(2 / math.prod(shape[1:]))
    return value.float()


@torch.no_grad()
def fill_by_fixture_rule(model: nn.Module, salt: int = 0) -> nn.Module:
    """Overwrite every state_dict entry (parameters and buffers) with `fixture_weight`; returns the model."""
    for key, tensor in model.state_dict().items():
        tensor.copy_(fixture_weight(key, tensor.shape, salt))
    return model


def reference_input() -> Tensor:
    """The fixtures' 4 x 3 x 32 x 32 input."""
    seed = architectures_fixture()["input_seed"]
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def save_crd_checkpoint(model: nn.Module, path: str | os.PathLike[str], epoch: int = 240,
                        best_acc: float = 73.5) -> None:
    """Save as RepDistiller's train_teacher.py does: {'epoch', 'model', 'best_acc', 'optimizer'}."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    torch.save(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "best_acc": torch.tensor(best_acc),  # CRD stores the meter's average, a tensor
            "optimizer": optimizer.state_dict(),
        },
        path,
    )


def save_random_teacher(path: str | os.PathLike[str], arch: str, seed: int) -> str:
    """A seeded, randomly initialised `arch` with 10 classes, saved in CRD's checkpoint layout."""
    from models import build_model
    torch.manual_seed(seed)
    save_crd_checkpoint(build_model(arch, 10), path)
    return str(path)


def rel_err(ours: Tensor, ref: Tensor) -> float:
    """max|ours - ref| / max|ref|, the fixtures' per-tensor comparison (in float64)."""
    ours, ref = torch.as_tensor(ours).detach().double(), torch.as_tensor(ref).double()
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def lines(text: str) -> list[str]:
    """A command's output, line by line, without the blank ends."""
    return text.strip().splitlines()


def main_env(**extra: str) -> dict[str, str]:
    """The environment of every main.py the tests start: no GPU, unbuffered, and one OpenMP thread per process
    (on a few shared cores, spinning threads slow every run many times over; one thread count also keeps runs
    that are compared bit for bit on the same summation order)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}


def run_main(args: Sequence[str], cwd: str | os.PathLike[str], timeout: float = 300
             ) -> subprocess.CompletedProcess[str]:
    """`python main.py ARGS` as a real subprocess in `cwd` (the repository's main.py, not a copy)."""
    from conftest import ROOT
    env = main_env()
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def method_options(work: Path, data: str, teacher: str, distill: str, **extra: Any) -> str:
    """A 1-epoch options file of a baseline on tiny data (no cocord section), written as work/<distill>.yml."""
    opt = tiny_options(data, teacher, distill=distill, epochs=1, **extra)
    del opt["cocord"]
    return write_yaml(work / f"{distill}.yml", opt)


def write_yaml(path: str | os.PathLike[str], options: dict[str, Any]) -> str:
    import yaml
    with open(path, "w") as f:
        yaml.safe_dump(options, f, sort_keys=False)
    return str(path)


# Small but complete CoCoRD runs: tiny heads and queue, CPU, a fixed seed.
TINY_COCORD = {"key_size": 64, "hidden_dim": 32, "embedding_dim": 16, "pred_dim": 8}
# What tiny_options add to a run's folder name: every option that differs from its default, in schema order.
TINY_NAME = "_batch_size16_n_cls10"
TINY_COCORD_NAME = TINY_NAME + "_key_size64_pred_dim8_hidden_dim32_embedding_dim16"


def tiny_options(data: str, teacher: str | None, **extra: Any) -> dict[str, Any]:
    options = {"student_model": "resnet8", "teacher_model": "resnet8", "data_folder": data, "download": False,
               "batch_size": 16, "num_workers": 0, "epochs": 2, "lr_decay_epochs": [1], "print_freq": 5,
               "gpu": None, "seed": 0, "n_cls": 10, "experiments_dir": "experiments", "cocord": dict(TINY_COCORD),
               "path": {"teacher": teacher}}
    options.update(extra)
    return options
