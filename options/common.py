"""The options every run has, whatever its method, with their defaults, types, ranges and behaviour.

One table: each `Field` says its default and type, its rule, what a resume does with it, whether it can change
a run's result and whether it names a run's folder. Each method adds its own keys (its `options`, in its
own file under distiller/). No torch: options are checked before torch is imported.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """One option: its default, type and range, and how it behaves beyond its value. These flags are the only
    place options are sorted: what a resume does with a key, what makes two runs' settings differ, and what
    names a run's folder all read them."""
    default: Any
    kind: str  # 'int', 'float', 'bool', 'str', 'path' (a string, `~` expanded), 'int_list'
    check: Callable[[Any], bool] | None = None
    rule: str = ""  # what `check` demands, for the error message
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    # keep: a resume keeps what the run was trained with (--set of it chooses which run to resume);
    # change: a resume takes it from an explicit --set (e.g. epochs: train on);
    # machine: where a run reads and writes, how fast it goes: a resume takes the command's value.
    resume: str = "keep"
    result: bool = True  # it can change what is trained: runs that differ in it have different settings
    report: bool | str = True  # a resume that changes it says so; "explicit": only a --set of it (the run records
    # what this machine applied, decided again here); False: never (the run says it elsewhere)
    in_name: bool = True  # a value other than the default is part of the run's folder name (if result)


def machine(default: Any, kind: str, *args: Any, report: bool | str = True, **kwargs: Any) -> Field:
    """A key about the machine and the files, not about what is trained."""
    return Field(default, kind, *args, resume="machine", result=False, report=report, **kwargs)


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _unit(v: Any) -> bool:
    return 0.0 <= v <= 1.0


POS, NONNEG, UNIT = (_positive, "must be > 0"), (_non_negative, "must be >= 0"), (_unit, "must be in [0, 1]")

# numpy takes seeds below 2**32 and trial t runs with seed + t - 1: leave room for 2**16 trials.
SEED_LIMIT = 2**32 - 2**16

# Keys the published code derives and writes into its options.yml; such a file must load again.
DERIVED = ("trial", "path.exp_root", "path.log", "path.model", "path.state")

# Keys every run has, whatever its method. Each method adds its own keys (its `options`, in its own
# file under distiller/); `distiller.base` (build_options) checks a file against both.
COMMON: dict[str, Any] = {
    "student_model": Field("resnet20", "str"),
    # `auto` (or absent): the architecture the teacher checkpoint holds. The published files name it (resnet56).
    "teacher_model": Field("auto", "str"),
    "gpu": machine(0, "int", *NONNEG, nullable=True),
    "dataset": Field("cifar100", "str", choices=("cifar100", "imagenet")),
    "data_folder": machine("./data_cifar100", "path"),
    "download": machine(True, "bool"),
    "batch_size": Field(64, "int", *POS),
    "num_workers": machine(8, "int", *NONNEG, report="explicit"),  # capped by the cores where it runs
    "start_epoch": Field(0, "int", lambda v: v == 0,
                         "is kept for the published files and must be 0; to continue a run set path.resume"),
    # Not part of a run's folder name: a resume trains a run on to more epochs (--resume --set epochs=N).
    "epochs": Field(240, "int", *POS, resume="change", in_name=False),
    "learning_rate": Field(0.05, "float", *POS, resume="change"),
    # With epochs, the schedule a resume may extend: not part of the folder name either.
    "lr_decay_epochs": Field([150, 180, 210], "int_list", lambda v: all(e > 0 for e in v),
                             "must be a list of positive epochs", resume="change", in_name=False),
    "lr_decay_rate": Field(0.1, "float", lambda v: 0 < v <= 1, "must be in (0, 1]", resume="change"),
    "weight_decay": Field(5e-4, "float", *NONNEG, resume="change"),
    "momentum": Field(0.9, "float", *UNIT, resume="change"),
    "print_freq": machine(300, "int", *POS),
    "path": {
        "resume": machine(None, "path", nullable=True, report=False),
        "teacher": machine("./t_model/resnet56/ckpt_epoch_240.pth", "path", nullable=True),
    },
    "distill": Field("cocord", "str"),  # one of the registered methods (distiller/)
    # Trials of a run differ in their seed only: the seed is not one of a run's settings.
    "seed": Field(None, "int", lambda v: 0 <= v < SEED_LIMIT,
                  f"must be in [0, {SEED_LIMIT}) (2**32 - 2**16: numpy's limit, less room for trials)", nullable=True,
                  result=False),
    "pin_memory": machine(True, "bool"),
    "n_cls": Field(100, "int", *POS),
    "experiments_dir": machine("experiments", "path"),
    # The folder under experiments_dir; null: the method's own naming rule (published: loss weights only).
    "experiment_name": Field(None, "str", lambda v: v not in ("", ".", "..") and "/" not in v and v.isprintable(),
                             "must be a plain folder name (no '/', no control characters)", nullable=True,
                             result=False),
    "sync_bn": Field(False, "bool", resume="change"),
    "speed": {  # the speed settings a run records are those that applied where it ran
        # auto: the GPU loader on a GPU, torchvision's loader on the CPU.
        "loader": machine("auto", "str", choices=("auto", "gpu", "torchvision"), report=False),
        "cuda_graph": machine(True, "bool", report=False),
        "compile": machine(True, "bool", report=False),
        "channels_last": machine(True, "bool", report=False),
        "streams": machine(True, "bool", report=False),
        "amp": Field(False, "bool", resume="change", report=False),  # bf16 autocast: changes the maths, if asked
    },
}
