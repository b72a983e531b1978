"""The frozen teacher: its architecture (named, or read from the checkpoint), its weights checked on load."""
from __future__ import annotations

from typing import Any

import torch

from models import CheckpointError, ZooModel, detect_architecture, load_teacher
from options.schema import OptionsError
from utils.fingerprint import fingerprint as tensor_fingerprint


def resolve_teacher_model(opt: dict[str, Any]) -> dict[str, Any]:
    """`teacher_model: auto` becomes the architecture the teacher checkpoint holds."""
    if opt["teacher_model"] != "auto":
        return opt
    if not opt["path"]["teacher"]:
        raise OptionsError("teacher_model: auto reads the architecture from path.teacher, which is empty; "
                           "set path.teacher to a checkpoint")
    return {**opt, "teacher_model": detect_architecture(opt["path"]["teacher"], opt["n_cls"])}


def load_checked_teacher(opt: dict[str, Any]) -> ZooModel:
    """The teacher, frozen, in eval mode; refused if its weights hold NaN or infinite values or a BatchNorm
    variance below zero (a damaged file would otherwise show as a NaN loss at the first step)."""
    if not opt["path"]["teacher"]:
        raise OptionsError(f"distill: {opt['distill']} needs a teacher: set path.teacher to a checkpoint")
    teacher = load_teacher(opt["path"]["teacher"], opt["teacher_model"], opt["n_cls"])
    for name, value in teacher.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"teacher checkpoint {opt['path']['teacher']} holds NaN or infinite values in "
                                  f"{name}; it is damaged: fetch or train it again")
        if name.endswith("running_var") and bool((value < 0).any()):
            raise CheckpointError(f"teacher checkpoint {opt['path']['teacher']} holds a negative BatchNorm variance "
                                  f"in {name}; it is damaged: fetch or train it again")
    return teacher


def fingerprint(model: torch.nn.Module) -> float:
    """A number that changes with any weight: a resume checks it is given the same teacher."""
    return float(sum(tensor_fingerprint(t) for t in model.state_dict().values() if t.numel()))


def check_teacher_outputs(opt: dict[str, Any], test: dict[str, float]) -> None:
    if not all(map(lambda v: v == v and abs(v) != float("inf"), test.values())):
        raise CheckpointError(f"teacher checkpoint {opt['path']['teacher']} gives NaN or infinite outputs on the "
                              "test set; it is damaged or was trained on other data")
