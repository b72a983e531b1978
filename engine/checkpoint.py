"""Checkpoints: written atomically, read safely, holding all a resume needs.

One format, a superset of CRD's (`{'epoch', 'model', 'best_acc', 'optimizer'}`), so any checkpoint we
write, student or teacher, loads as a teacher through the zoo's `load_teacher`.
"""
from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch


class ResumeError(ValueError):
    """A resume target that cannot be used: one line saying which and why."""


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Temporary file, flush, fsync, rename: a kill at any moment leaves the old file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through atomic_write: the previous checkpoint stays loadable whatever happens."""
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": [list(t) if isinstance(t, tuple) else t for t in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume(target: str) -> Path:
    """A checkpoint file, or an experiment (trial) folder meaning its last checkpoint."""
    path = Path(target)
    if path.is_dir():
        path = path / "model" / "checkpoint.pth"
    if not path.is_file():
        raise ResumeError(f"nothing to resume at {target}: expected a checkpoint file or a trial folder "
                          "holding model/checkpoint.pth")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means the same thing to the user
        raise ResumeError(f"cannot read checkpoint {path} ({type(err).__name__}); it is damaged or not ours") from None
    if not isinstance(ckpt, dict) or "method" not in ckpt or "epoch" not in ckpt:
        raise ResumeError(f"{path} is not a checkpoint written by this project's training (no method state); "
                          "it can be used as path.teacher, not for resume")
    return ckpt
