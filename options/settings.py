"""What options mean beyond their values, read from their Fields (options/schema.py): which keys decide a
run's result (two runs that agree on these have the same settings), and which values name a run's folder."""
from __future__ import annotations

import hashlib
import re
from typing import Any

from options.common import COMMON, DERIVED, Field

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
MAX_NAME_BYTES = 200  # a folder name stays well under file systems' 255-byte limit, with room for a suffix


def normalize(value: Any) -> Any:
    """A hashable value that compares by meaning: 1, 1.0 and '1e0' are equal (YAML 1.1 reads 5e-4 as text)."""
    if (isinstance(value, (int, float)) and not isinstance(value, bool)) or \
            (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        return float(value)
    return tuple(normalize(v) for v in value) if isinstance(value, (list, tuple)) else value


def flatten(opt: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'cocord': {'T': 0.1}} -> {'cocord.T': 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in opt.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{'cocord.T': 0.1} -> {'cocord': {'T': 0.1}}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def fields(schema: dict[str, Any] = COMMON, prefix: str = "") -> dict[str, Field]:
    """Every Field of a schema by its dotted key."""
    table: dict[str, Field] = {}
    for key, node in schema.items():
        table.update(fields(node, f"{prefix}{key}.") if isinstance(node, dict) else {f"{prefix}{key}": node})
    return table


def affects_result(key: str, table: dict[str, Field]) -> bool:
    """Keys no schema here declares are a method's (they decide its result), except the published code's
    derived keys and anything in a section whose every key is neutral (`path`)."""
    if key in table:
        return table[key].result
    if key in DERIVED or key.split(".")[0] in DERIVED:
        return False
    section = [f for k, f in table.items() if k.startswith(key.split(".")[0] + ".")]
    return not section or any(f.result for f in section)


def result_settings(opt: dict[str, Any], schema: dict[str, Any] = COMMON) -> dict[str, Any]:
    """The options that decide a run's result, flattened, values normalised (1 == 1.0 == '1e0')."""
    table = fields(schema)
    return {k: normalize(v) for k, v in flatten(opt).items() if affects_result(k, table)}


def show(value: Any) -> str:
    """A value as a folder name holds it: 0.07, 1e-05, 150-180-210, True."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(show(v) for v in value)
    return str(value).replace("/", "-")


def folder_name(base: str, opt: dict[str, Any], schema: dict[str, Any], shown: set[str]) -> str:
    """`base` then `_<key><value>` for every option that names a folder (result-affecting, `in_name`) and differs
    from its default, in the schema's order, except the `shown` keys (`base` holds them). A key is written by
    its last part unless another key of the schema ends the same way (cocord.momentum, momentum). A name over
    MAX_NAME_BYTES ends in a digest of those options instead (the run's options.yml lists them)."""
    table = fields(schema)
    flat = flatten(opt)
    ends = [k.rsplit(".", 1)[-1] for k in table]
    parts = []
    for key, field in table.items():
        if key in shown or not (field.result and field.in_name) or key not in flat:
            continue
        if normalize(flat[key]) != normalize(field.default):
            last = key.rsplit(".", 1)[-1]
            parts.append(f"_{last if ends.count(last) == 1 else key}{show(flat[key])}")
    suffix = "".join(parts)
    if len((base + suffix).encode()) > MAX_NAME_BYTES:
        suffix = "_opts-" + hashlib.sha1(suffix.encode()).hexdigest()[:10]
    return base + suffix
