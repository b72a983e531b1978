"""Reading checkpoints safely and loading teachers, with one-line errors that say what to do.

Files are only ever opened with `torch.load(..., weights_only=True)`: a pickle that needs code to
load is refused, never run.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from .base import ZooModel
from .registry import MODEL_REGISTRY, build_model, unknown_model_message

HOW_TO_GET_TEACHERS = (
    "train one with `python main.py -opt options/train_teacher.yml` "
    "or fetch the published ones with `python tools/fetch_teachers.py`"
)
# Where a state_dict sits inside a checkpoint: CRD/RepDistiller, published CoCoRD, common trainers.
_STATE_DICT_ENTRIES = ("model", "s_model_dict", "state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile saves
_PROBE_CLASSES = 100  # signatures are built once at this class count; the head's row count is free


class CheckpointError(ValueError):
    """A user-facing checkpoint problem; the message is one line saying what is wrong and what to do."""


@contextlib.contextmanager
def _numpy_scalars_allowed() -> Iterator[None]:
    """Let numpy scalars (an `accuracy` saved as np.float64) load; they carry data, never code."""
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed = [core.multiarray.scalar, np.dtype] + [type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"]
    except Exception:  # numpy missing or laid out differently: nothing extra is allowed
        allowed = []
    with torch.serialization.safe_globals(allowed):
        yield


def _load_error(path: Path, head: bytes, exc: Exception) -> CheckpointError:
    """Turn a torch.load failure into one line: unsafe, damaged, or not a checkpoint at all."""
    msg = str(exc)
    is_zip = head.startswith(b"PK\x03\x04")
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO opcode
    if not head:
        return CheckpointError(f"checkpoint {path} is empty (0 bytes); save or download it again")
    if isinstance(exc, pickle.UnpicklingError) and (is_zip or is_pickle):
        found = re.search(r"GLOBAL (\S+)", msg) or re.search(r"(Unsupported operand \d+)", msg)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(
            f"checkpoint {path} was refused as unsafe: loading it would need to run code or build "
            f"objects other than tensors{what}; it was not executed. Use a file that holds a plain state_dict"
        )
    if is_zip or is_pickle:
        first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
        return CheckpointError(f"checkpoint {path} is damaged or truncated ({first}); save or download it again")
    return CheckpointError(f"{path} is not a PyTorch checkpoint (torch.save format); check the path")


def _strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The model state_dict in a CRD (`model`), CoCoRD (`s_model_dict`) or bare checkpoint, on the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; to get a teacher, {HOW_TO_GET_TEACHERS}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; point at the .pth file inside it")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        with _numpy_scalars_allowed():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    except Exception as e:  # every loader failure (pickle, zip, EOF, ...) becomes one line
        raise _load_error(path, head, e) from None

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
    for entry in _STATE_DICT_ENTRIES:
        if isinstance(obj.get(entry), Mapping):
            obj = obj[entry]
            break
    if not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        keys = ", ".join(map(str, list(obj)[:6]))
        raise CheckpointError(
            f"checkpoint {path} holds no state_dict: expected a 'model' or 's_model_dict' entry "
            f"or a dict of tensors (top-level keys: {keys or 'none'})"
        )
    return _strip_wrappers(dict(obj))


@cache
def _signature(name: str) -> tuple[dict[str, tuple[int, ...]], str]:
    """Key -> shape of a zoo entry and the key prefix of its final Linear; built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = MODEL_REGISTRY[name](num_classes=_PROBE_CLASSES)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return shapes, head


def _num_classes_if_match(name: str, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The class count if `shapes` is this entry's signature with any number of classes, else None."""
    ref, head = _signature(name)
    if ref.keys() != shapes.keys():
        return None
    weight, bias = shapes[f"{head}.weight"], shapes.get(f"{head}.bias", ())
    if len(weight) != 2 or weight[1] != ref[f"{head}.weight"][1]:
        return None
    n = weight[0]
    if f"{head}.bias" in ref and bias != (n,):
        return None
    skip = {f"{head}.weight", f"{head}.bias"}
    return n if all(shapes[k] == s for k, s in ref.items() if k not in skip) else None


def match_architectures(state_dict: Mapping[str, Tensor]) -> list[tuple[str, int]]:
    """(name, num_classes) of every zoo entry whose keys and shapes equal the state_dict's."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    found = [(name, _num_classes_if_match(name, shapes)) for name in MODEL_REGISTRY]
    return [(name, n) for name, n in found if n is not None]


def identify_architecture(state_dict: Mapping[str, Tensor], num_classes: int | None = 100) -> list[str]:
    """Names of the zoo entries that load this state_dict strictly (with any class count if None)."""
    return [name for name, n in match_architectures(state_dict) if num_classes is None or n == num_classes]


def _describe(matches: list[tuple[str, int]], num_classes: int) -> str:
    parts = [name if n == num_classes else f"{name} with {n} classes" for name, n in matches]
    return " or ".join(parts)


def _key_diff(path: Path, arch: str, state_dict: Mapping[str, Tensor]) -> str:
    ref, _ = _signature(arch)
    missing = [k for k in ref if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ref]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {ref[k]}" for k in ref if k in state_dict
             and tuple(state_dict[k].shape) != ref[k]]
    bits = [f"{label} {len(items)} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", wrong))
            if items]
    return f"checkpoint {path} matches no model in the zoo; against {arch}: " + "; ".join(bits)


def load_teacher(path: str | os.PathLike[str], arch: str, num_classes: int = 100) -> ZooModel:
    """Build `arch`, load the checkpoint strictly, freeze every parameter and return it in eval mode."""
    path = Path(path)
    if arch not in MODEL_REGISTRY:
        raise CheckpointError(unknown_model_message(arch))
    state_dict = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if _num_classes_if_match(arch, shapes) != num_classes:
        matches = match_architectures(state_dict)
        if not matches:
            raise CheckpointError(_key_diff(path, arch, state_dict))
        if [name for name, _ in matches] == [arch]:
            n = matches[0][1]
            raise CheckpointError(
                f"checkpoint {path} is a {arch} with {n} classes, but {num_classes} classes were asked for "
                f"(use a dataset/num_classes of {n} or a {arch} checkpoint with {num_classes} classes)"
            )
        name = matches[0][0]
        raise CheckpointError(
            f"checkpoint {path} is a {_describe(matches, num_classes)}, but the options say {arch} "
            f"(set teacher_model: {name} or point path.teacher at a {arch} checkpoint)"
        )
    # Meta build + to_empty skips the random init: every entry is overwritten by the strict load.
    with torch.device("meta"):
        model = build_model(arch, num_classes)
    model = model.to_empty(device="cpu")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied into float32
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not load into {arch}: {first}") from None
    model.requires_grad_(False)
    return model.eval()
