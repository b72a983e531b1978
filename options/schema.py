"""The options file: the published keys and defaults, plus ours, each with a type and a range.

A file written for the published code runs unchanged; a typo is an error that names the closest valid
key, never silently ignored. This module imports no torch, so `main.py` checks the common keys at once;
each method's own keys are declared in its file and joined to these by `engine.config`.
"""
from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class OptionsError(ValueError):
    """A bad options file or override: one line that says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Field:
    default: Any
    kind: str  # 'int', 'float', 'bool', 'str', 'int_list'
    check: Callable[[Any], bool] | None = None
    rule: str = ""  # what `check` demands, for the error message
    nullable: bool = False
    choices: tuple[str, ...] | None = None


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _unit(v: Any) -> bool:
    return 0.0 <= v <= 1.0


POS, NONNEG, UNIT = (_positive, "must be > 0"), (_non_negative, "must be >= 0"), (_unit, "must be in [0, 1]")

# Keys every run has, whatever its method. Each method adds its own keys (its `options`, in its own
# file under distiller/); `engine.config` checks a file against both.
COMMON: dict[str, Any] = {
    "student_model": Field("resnet20", "str"),
    "teacher_model": Field("resnet56", "str"),  # `auto`: the architecture the teacher checkpoint holds
    "gpu": Field(0, "int", *NONNEG, nullable=True),
    "dataset": Field("cifar100", "str", choices=("cifar100", "imagenet")),
    "data_folder": Field("./data_cifar100", "str"),
    "download": Field(True, "bool"),
    "batch_size": Field(64, "int", *POS),
    "num_workers": Field(8, "int", *NONNEG),
    "start_epoch": Field(0, "int", lambda v: v == 0,
                         "is kept for the published files and must be 0; to continue a run set path.resume"),
    "epochs": Field(240, "int", *POS),
    "learning_rate": Field(0.05, "float", *POS),
    "lr_decay_epochs": Field([150, 180, 210], "int_list", lambda v: all(e > 0 for e in v),
                             "must be a list of positive epochs"),
    "lr_decay_rate": Field(0.1, "float", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "weight_decay": Field(5e-4, "float", *NONNEG),
    "momentum": Field(0.9, "float", *UNIT),
    "print_freq": Field(300, "int", *POS),
    "path": {
        "resume": Field(None, "str", nullable=True),
        "teacher": Field("./t_model/resnet56/ckpt_epoch_240.pth", "str", nullable=True),
    },
    "distill": Field("cocord", "str"),  # one of the registered methods (distiller/)
    "seed": Field(None, "int", *NONNEG, nullable=True),
    "pin_memory": Field(True, "bool"),
    "n_cls": Field(100, "int", *POS),
    "experiments_dir": Field("experiments", "str"),
    "experiment_name": Field(None, "str", nullable=True),  # the folder under experiments_dir; null: the method's rule
    "sync_bn": Field(False, "bool"),
    "speed": {
        # auto: the GPU loader on a GPU, torchvision's loader on the CPU.
        "loader": Field("auto", "str", choices=("auto", "gpu", "torchvision")),
        "cuda_graph": Field(True, "bool"),
        "compile": Field(True, "bool"),
        "channels_last": Field(True, "bool"),
        "streams": Field(True, "bool"),
        "amp": Field(False, "bool"),  # bf16 autocast: changes the maths, so only when asked
    },
}


def merge_schemas(*parts: dict[str, Any]) -> dict[str, Any]:
    """One schema from several (COMMON and each method's keys); a key two parts declare must agree."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, node in part.items():
            if key not in merged:
                merged[key] = dict(node) if isinstance(node, dict) else node
            elif isinstance(node, dict) and isinstance(merged[key], dict):
                merged[key] = merge_schemas(merged[key], node)
            elif merged[key] != node:
                raise ValueError(f"option '{key}' is declared twice with different rules")
    return merged


def defaults(schema: dict[str, Any] = COMMON) -> dict[str, Any]:
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def _coerce(where: str, field: Field, value: Any) -> Any:
    """Type-check one value. YAML 1.1 reads `5e-4` as a string, so floats may arrive as text."""
    if value is None:
        if field.nullable:
            return None
        raise OptionsError(f"option '{where}' must not be empty (null); the default is {field.default!r}")
    kind = field.kind
    if kind == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "int_list": isinstance(value, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in value),
    }[kind]
    if not ok:
        want = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "int_list": "a list of integers"}[kind]
        raise OptionsError(f"option '{where}' must be {want}, got {value!r}")
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):
            raise OptionsError(f"option '{where}' must be a finite number, got {value!r}")
    if field.choices and value not in field.choices:
        raise OptionsError(f"option '{where}' must be one of {', '.join(field.choices)}, got {value!r}")
    if field.check and not field.check(value):
        raise OptionsError(f"option '{where}' {field.rule}, got {value!r}")
    return value


def _merge(where: str, schema: dict[str, Any], base: dict[str, Any], given: Any, partial: bool) -> None:
    if not isinstance(given, dict):
        raise OptionsError(f"option '{where or 'file'}' must be a mapping of keys, got {given!r}")
    for key, value in given.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in schema:
            if partial and not where:
                continue  # a method's key: checked once the methods are known (engine.config)
            raise OptionsError(f"unknown option '{full}'{_closest(str(key), list(schema))}")
        node = schema[key]
        if isinstance(node, dict):
            _merge(full, node, base[key], {} if value is None else value, partial)
        else:
            base[key] = _coerce(full, node, value)


def build_options(given: dict[str, Any], overrides: list[str] = (), schema: dict[str, Any] = COMMON,
                  partial: bool = False) -> dict[str, Any]:
    """Defaults, then the file's values, then `key.sub=value` overrides; all validated against `schema`.
    `partial` skips unknown top-level keys: the check `main.py` makes before the methods are imported."""
    opt = defaults(schema)
    _merge("", schema, opt, given, partial)
    _merge("", schema, opt, parse_overrides(overrides), partial)
    decay = opt["lr_decay_epochs"]
    if decay != sorted(decay):
        raise OptionsError(f"option 'lr_decay_epochs' must be increasing, got {decay}")
    return opt


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`cocord.T=0.07 epochs=10` -> nested mapping; values are read as YAML (lists, null, true)."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise OptionsError(f"override '{item}' must look like key=value (e.g. cocord.T=0.07)")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise OptionsError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return tree


def read_options_file(path: str | Path) -> dict[str, Any]:
    """The file's mapping of keys, read with the safe YAML loader."""
    path = Path(path)
    if not path.is_file():
        raise OptionsError(f"options file {path} not found; start from options/train_student.yml")
    try:
        given = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise OptionsError(f"options file {path} is not valid YAML{at}: {getattr(err, 'problem', err)}") from None
    return given or {}


def dump_options(opt: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))


# Keys that say where a run reads and writes and how fast it goes, not what it computes: two runs that differ
# only in these have the same settings (summaries average them, a new run may replace the other's folder).
NEUTRAL_KEYS = ("gpu", "data_folder", "download", "num_workers", "pin_memory", "print_freq", "experiments_dir",
                "experiment_name", "path", "seed", "trial", "speed.loader", "speed.cuda_graph", "speed.compile",
                "speed.channels_last", "speed.streams")


def flatten(opt: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'cocord': {'T': 0.1}} -> {'cocord.T': 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in opt.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def result_settings(opt: dict[str, Any]) -> dict[str, Any]:
    """The options that decide a run's result, flattened, numbers compared as numbers (1 == 1.0)."""
    def neutral(key: str) -> bool:
        return any(key == n or key.startswith(n + ".") for n in NEUTRAL_KEYS)
    return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in flatten(opt).items() if not neutral(k)}
