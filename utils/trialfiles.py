"""Reading the files of a trial folder (options.yml, results.json) within limits, whoever wrote them.

A trial folder may hold a file edited by hand, damaged, or planted: a YAML alias bomb, a nest thousands deep, a
gigabyte of JSON, NaN. Everything that reads one (main.py's folder checks, the tools) goes through here, so each
such file costs at most a bounded read and is refused with a reason that fits in one line. No torch.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from options.yamlfile import YamlRefused, read_yaml_file

MAX_JSON_BYTES = 16 << 20  # results.json: about 500 bytes per epoch (240 epochs: 120 KB); run.json a few KB a session
MAX_JSON_DEPTH = 8  # both nest 4 levels: object, history or sessions, an entry, a value (a session's environment)


class TrialFileRefused(ValueError):
    """A trial file that is missing, unreadable or over a limit; str() is '<file name> <reason>'."""


def read_trial_options(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A trial's options.yml, read with the options file's limits (size, nesting, aliases); a mapping."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # said here: read_yaml_file's words are for an options file
            raise TrialFileRefused(f"{path.name} is not a regular file")
    except FileNotFoundError:
        raise TrialFileRefused(f"{path.name} not found") from None
    except OSError as err:
        raise TrialFileRefused(f"{path.name} cannot be read ({err.strerror})") from None
    try:
        opts = read_yaml_file(path)
    except YamlRefused as err:
        raise TrialFileRefused(f"{path.name} {err}") from None
    if not isinstance(opts, dict):
        raise TrialFileRefused(f"{path.name} is not a mapping of options")
    return opts


class _Damaged(ValueError):
    """A value JSON allows but a trial's JSON files never hold."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as infinity
        raise _Damaged(f"the number {text[:20]} is out of range")
    return value


def _constant(name: str) -> Any:
    raise _Damaged(f"it holds {name}, which this project never writes")


def _depth_over(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` containers (an explicit stack: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return False


def read_trial_json(path: str | os.PathLike[str], max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A trial's results.json or run.json: a JSON object of at most `max_bytes`, nesting at most MAX_JSON_DEPTH
    levels, every number finite (both are written without NaN or infinity: one there is damage)."""
    path = Path(path)
    try:
        info = path.stat()  # before opening: a named pipe would wait for a writer forever
        if not stat.S_ISREG(info.st_mode):
            raise TrialFileRefused(f"{path.name} is not a regular file")
        if info.st_size > max_bytes:
            raise TrialFileRefused(f"{path.name} is {info.st_size} bytes, over the {max_bytes}-byte limit")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise TrialFileRefused(f"{path.name} not found") from None
    except OSError as err:
        raise TrialFileRefused(f"{path.name} cannot be read ({err.strerror})") from None
    if len(data) > max_bytes:  # it grew after stat
        raise TrialFileRefused(f"{path.name} is over the {max_bytes}-byte limit")
    try:
        value = json.loads(data.decode("utf-8"), parse_float=_finite, parse_constant=_constant)
    except UnicodeDecodeError:
        raise TrialFileRefused(f"{path.name} is not UTF-8 text") from None
    except RecursionError:
        raise TrialFileRefused(f"{path.name} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except _Damaged as err:
        raise TrialFileRefused(f"{path.name} is damaged: {err}") from None
    except json.JSONDecodeError as err:
        raise TrialFileRefused(f"{path.name} is not valid JSON ({err.msg}, line {err.lineno})") from None
    except ValueError:  # int() of more digits than Python converts (sys.get_int_max_str_digits)
        raise TrialFileRefused(f"{path.name} is damaged: it holds an integer too long to read") from None
    if not isinstance(value, dict):
        raise TrialFileRefused(f"{path.name} is not a JSON object")
    if _depth_over(value, MAX_JSON_DEPTH):
        raise TrialFileRefused(f"{path.name} nests deeper than {MAX_JSON_DEPTH} levels")
    return value
