"""Reading checkpoints safely and loading teachers, with one-line errors that say what to do.

Files are only ever opened with `torch.load(..., weights_only=True)`: a pickle that needs code to
load is refused, never run. Only regular files are read (a named pipe would block forever). Key names
that other published copies of a zoo network use (`ZooModel.legacy_keys`) are translated in one place,
`_to_zoo_keys`, so such checkpoints are recognised and load strictly like our own.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import stat
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

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
V = TypeVar("V")


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


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _open_regular_file(path: Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file: opening a FIFO blocks forever, and a device or a
    socket never ends. O_NONBLOCK makes the open itself return at once; the check is on what was opened."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = next((label for test, label in _NOT_REGULAR if test(mode)), "not a regular file")
        raise CheckpointError(f"checkpoint {path} is {what}, not a regular file; point at a saved .pth file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)  # a regular file ignores the flag; clear it so nothing downstream sees it
    return os.fdopen(fd, "rb")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The model state_dict in a CRD (`model`), CoCoRD (`s_model_dict`) or bare checkpoint, on the CPU."""
    path = Path(path)
    # os.path's tests answer False where pathlib's raise (a name longer than the file system takes, a folder it
    # may not search): such a path is one line, as a missing one is.
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; to get a teacher, {HOW_TO_GET_TEACHERS}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory; point at the .pth file inside it")
    head = b""
    try:
        # Read the very file that was checked (not the path again), so a swap in between cannot slip through.
        with _open_regular_file(path) as f:
            head = f.read(8)
            f.seek(0)
            with _numpy_scalars_allowed():
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
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


class _Signature(NamedTuple):
    shapes: dict[str, tuple[int, ...]]  # key -> shape, at _PROBE_CLASSES classes
    head: str  # key prefix of the final Linear (its row count is the class count)
    legacy_keys: Mapping[str, str]  # other layouts' key names -> ours (ZooModel.legacy_keys)


@cache
def _signature(name: str) -> _Signature:
    """What a checkpoint of this zoo entry holds; built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = MODEL_REGISTRY[name](num_classes=_PROBE_CLASSES)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return _Signature(shapes, head, getattr(model, "legacy_keys", {}))


def _to_zoo_keys(name: str, entries: Mapping[str, V]) -> dict[str, V]:
    """`entries` with the legacy key names that zoo entry `name` accepts renamed to its own; the one place
    where other layouts are translated. Nothing is renamed if a target name is already there (a mixed file
    must not have one tensor silently replace another)."""
    legacy = _signature(name).legacy_keys
    if not any(k in entries for k in legacy) or any(legacy[k] in entries for k in legacy if k in entries):
        return dict(entries)
    return {legacy.get(k, k): v for k, v in entries.items()}


def _num_classes_if_match(name: str, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The class count if `shapes` is this entry's signature with any number of classes, else None."""
    ref, head, _ = _signature(name)
    shapes = _to_zoo_keys(name, shapes)
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
    """(name, num_classes) of every zoo entry whose keys (or its legacy names) and shapes equal the state_dict's."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    found = [(name, _num_classes_if_match(name, shapes)) for name in MODEL_REGISTRY]
    return [(name, n) for name, n in found if n is not None]


def identify_architecture(state_dict: Mapping[str, Tensor], num_classes: int | None = 100) -> list[str]:
    """Names of the zoo entries that load this state_dict strictly (with any class count if None)."""
    return [name for name, n in match_architectures(state_dict) if num_classes is None or n == num_classes]


def _describe(matches: list[tuple[str, int]], num_classes: int) -> str:
    parts = [name if n == num_classes else f"{name} with {n} classes" for name, n in matches]
    return " or ".join(parts)


def _key_diff(arch: str, state_dict: Mapping[str, Tensor]) -> str:
    """What keeps `state_dict` from loading into `arch`: missing and unexpected keys, wrong shapes."""
    ref = _signature(arch).shapes
    state_dict = _to_zoo_keys(arch, state_dict)
    missing = [k for k in ref if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ref]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {ref[k]}" for k in ref if k in state_dict
             and tuple(state_dict[k].shape) != ref[k]]
    bits = [f"{label} {len(items)} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", wrong))
            if items]
    return "; ".join(bits)


def _closest_entry(state_dict: Mapping[str, Tensor]) -> str:
    """The zoo entry whose key names overlap the state_dict's most (Jaccard; the first in registry order on ties)."""
    def overlap(name: str) -> float:
        keys, ref = set(_to_zoo_keys(name, state_dict)), _signature(name).shapes.keys()
        return len(keys & ref) / len(keys | ref)

    return max(MODEL_REGISTRY, key=overlap)


def detect_architecture(path: str | os.PathLike[str], num_classes: int | None) -> str:
    """The one zoo name whose keys and shapes the checkpoint holds, with `num_classes` classes (any if None).

    For `teacher_model: auto`. Raises CheckpointError (one line) if no entry matches, saying what the file
    holds, or if several do, naming them."""
    path = Path(path)
    state_dict = read_state_dict(path)
    matches = match_architectures(state_dict)
    fitting = [name for name, n in matches if num_classes is None or n == num_classes]
    if len(fitting) == 1:
        return fitting[0]
    if fitting:
        raise CheckpointError(
            f"checkpoint {path} fits several models of the zoo ({', '.join(fitting)}); "
            f"set teacher_model to the one it is instead of auto"
        )
    if matches:  # the right network with another class count
        name, n = matches[0]
        raise CheckpointError(
            f"checkpoint {path} is a {_describe(matches, num_classes)}, but {num_classes} classes were asked for "
            f"(set n_cls: {n} or point path.teacher at a checkpoint with {num_classes} classes)"
        )
    closest = _closest_entry(state_dict)
    raise CheckpointError(
        f"checkpoint {path} holds a state_dict of {len(state_dict)} tensors that matches no model in the zoo "
        f"(closest: {closest}, {_key_diff(closest, state_dict)}); use a checkpoint of one of: "
        f"{', '.join(MODEL_REGISTRY)}"
    )


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
            raise CheckpointError(
                f"checkpoint {path} matches no model in the zoo; against {arch}: {_key_diff(arch, state_dict)}"
            )
        if [name for name, _ in matches] == [arch]:
            n = matches[0][1]
            raise CheckpointError(
                f"checkpoint {path} is a {arch} with {n} classes, but {num_classes} classes were asked for "
                f"(set n_cls: {n} or point path.teacher at a {arch} checkpoint with {num_classes} classes)"
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
        model.load_state_dict(_to_zoo_keys(arch, state_dict), strict=True)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied into float32
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not load into {arch}: {first}") from None
    model.requires_grad_(False)
    return model.eval()
