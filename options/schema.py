"""Reading an options file and --set overrides against a schema (options/common.py and the methods' keys).

A file written for the published code runs unchanged; a typo is an error that names the closest valid
key, never silently ignored. This module imports no torch, so `main.py` checks the common keys at once;
each method's own keys are declared in its file and joined to these by `distiller.base`.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from options.common import COMMON, DERIVED, NONNEG, POS, SEED_LIMIT, UNIT, Field, machine  # noqa: F401 (the schema's parts)
from options.yamlfile import YamlRefused, YamlSyntax, holds_comment, load_yaml, read_yaml_file, show_name, show_value


class OptionsError(ValueError):
    """A bad options file or override: one line that says what is wrong and how to fix it."""


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


def did_you_mean(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5) if len(name) <= 100 else []
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(valid)}"


def _fits_a_file_name(text: str) -> bool:
    """Neither a NUL (os.stat raises ValueError) nor a surrogate that is no escaped byte (UnicodeEncodeError)."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return False
    return "\0" not in text


def _coerce(where: str, field: Field, value: Any) -> Any:
    """Type-check one value. YAML 1.1 reads `5e-4` as a string, so floats may arrive as text."""
    if value is None:
        if field.nullable:
            return None
        raise OptionsError(f"option '{where}' must not be empty (null); the default is {show_value(field.default)}")
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
        "path": isinstance(value, str),
        "int_list": isinstance(value, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in value),
    }[kind]
    if not ok:
        want = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "path": "a path (a string)", "int_list": "a list of integers"}[kind]
        raise OptionsError(f"option '{where}' must be {want}, got {show_value(value)}")
    if kind in ("str", "path") and not _fits_a_file_name(value):
        raise OptionsError(f"option '{where}' must be text a file name can hold (no NUL character, no lone "
                           f"surrogate), got {show_value(value)}")
    if kind == "float":
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise OptionsError(f"option '{where}' must be a finite number, got {show_value(value)}")
        value = number + 0.0  # -0.0 is 0.0: a folder name shows it the same way
    if kind == "path":  # `~/x` means the home folder for every reader, not a folder named `~`
        value = os.path.expanduser(value)
    if field.choices and value not in field.choices:
        raise OptionsError(f"option '{where}' must be one of {', '.join(field.choices)}, got {show_value(value)}")
    if field.check and not field.check(value):
        raise OptionsError(f"option '{where}' {field.rule}, got {show_value(value)}")
    if kind in ("int", "int_list") and not all(-2**63 <= v < 2**63 for v in (value if kind == "int_list" else [value])):
        raise OptionsError(f"option '{where}' must fit in a 64-bit integer (torch's), got {show_value(value)}")
    return value


def _merge(where: str, schema: dict[str, Any], base: dict[str, Any], given: Any, partial: bool | set[str],
           deferred: dict[str, Any], problems: list[str], replaced: dict[str, Any] | None = None) -> None:
    """Validate `given` into `base`; every problem found is appended to `problems` (all are reported at once).
    Top-level keys `partial` allows are set aside in `deferred`, raw, for the methods' check; `replaced` gets
    the value each key held before `given` set it (dotted keys)."""
    if not isinstance(given, dict):
        problems.append(f"option '{where or 'file'}' must be a mapping of keys, got {show_value(given)}")
        return
    for key, value in given.items():
        name = key if isinstance(key, str) else show_value(key)  # str() of a huge int raises
        full = f"{where}.{name}" if where else name
        if key not in schema:
            if partial and not where and (partial is True or key in partial):
                deferred[key] = value  # perhaps a method's key: checked once the methods are known (distiller.base)
                continue
            # The names methods may declare (partial) are searched for a close match, never listed: a guess.
            close = did_you_mean(name, list(schema) + sorted(partial)) if isinstance(partial, set) else ""
            hint = close if "did you mean" in close else did_you_mean(name, list(schema))
            problems.append(f"unknown option '{show_name(full)}'{hint}")
            continue
        node = schema[key]
        try:
            if isinstance(node, dict):
                _merge(full, node, base[key], {} if value is None else value, partial, {}, problems, replaced)
            else:
                if replaced is not None:
                    replaced[full] = base[key]
                base[key] = _coerce(full, node, value)
        except OptionsError as err:
            problems.append(str(err))


def _raise(problems: list[str]) -> None:
    """One line for every problem: a file with two typos names both."""
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise OptionsError("; ".join(problems[:4]) + more)


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _drop_derived(given: Any) -> tuple[Any, list[str]]:
    """`given` without the DERIVED keys (a copy if any), and the names of those it held."""
    if not isinstance(given, dict):
        return given, []
    dropped = []
    given = dict(given)
    for name in DERIVED:
        *parents, last = name.split(".")
        node = given
        for part in parents:  # copy each section on the way down: the caller's mapping stays as it was
            if not isinstance(node.get(part), dict):
                break
            node[part] = node = dict(node[part])
        else:  # every section is there
            if last in node:
                del node[last]
                dropped.append(name)
    return given, dropped


def build_options(given: dict[str, Any], overrides: Sequence[str] = (), schema: dict[str, Any] = COMMON,
                  partial: bool | set[str] = False, notes: list[str] | None = None,
                  deferred: dict[str, Any] | None = None, replaced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the file's values, then `key.sub=value` overrides; all validated against `schema`.
    `partial`: the check `main.py` makes before the methods are imported: unknown top-level keys wait for the
    methods' check if they are in `partial` (the names a method may declare: options.method_keys), or all of them
    if it is True; they are collected, file then overrides, raw, in `deferred`. Other unknown keys are errors.
    `replaced` gets the file's (or default) value of each key an override changed.
    The published code's derived keys (DERIVED) in `given` are dropped; if `notes` is a list, one line
    naming them is appended to it for the caller to show (pass it in one call only, so it shows once)."""
    given, dropped = _drop_derived(given)
    if dropped and notes is not None:
        notes.append(f"ignored keys the published code derives: {', '.join(dropped)}")
    opt, problems, later = defaults(schema), [], {}
    _merge("", schema, opt, given, partial, later, problems)
    override_later: dict[str, Any] = {}
    _merge("", schema, opt, parse_overrides(overrides), partial, override_later, problems, replaced)
    _raise(problems)
    if deferred is not None:
        deferred.update(_deep_update(copy.deepcopy(later), override_later))
    decay = opt.get("lr_decay_epochs")
    if decay is not None and decay != sorted(decay):
        raise OptionsError(f"option 'lr_decay_epochs' must be increasing, got {show_value(decay)}")
    return opt


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`cocord.T=0.07 epochs=10` -> nested mapping; values are read as YAML (lists, null, true), but a value that is
    not YAML, or that holds a YAML comment (`experiment_name=run #3`), is the text itself.
    A key given twice, or both as a section and inside it (`cocord=...` and `cocord.T=...`), is an error."""
    tree: dict[str, Any] = {}
    first: dict[str, str] = {}  # each key given so far -> the override that gave it
    for item in items:
        key, sep, text = item.partition("=")
        shown = show_value(item)
        parts = key.split(".")
        if not sep or not all(parts):
            raise OptionsError(f"override {shown} must look like key=value (e.g. cocord.T=0.07)")
        try:
            value = load_yaml(text) if text else None
            if holds_comment(text):  # ' #' on a command line is part of the value, never a comment
                value = text
        except YamlSyntax:
            value = text  # not YAML: the text itself, e.g. a path holding ': '
        except YamlRefused as err:
            raise OptionsError(f"override {shown} {err}") from None
        for earlier_key, earlier in first.items():  # two `epochs`, or `cocord` and `cocord.T`
            if earlier_key == key:
                raise OptionsError(f"option '{show_name(key)}' is given twice ({show_value(earlier, 40)} and "
                                   f"{show_value(item, 40)}); give it once")
            if earlier_key.startswith(key + ".") or key.startswith(earlier_key + "."):
                raise OptionsError(f"overrides {show_value(earlier, 40)} and {show_value(item, 40)} both set "
                                   f"'{show_name(max(key, earlier_key, key=len))}'; give it once")
        first[key] = item
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def read_options_file(path: str | Path) -> dict[str, Any]:
    """The file's mapping of keys, read with the safe YAML loader within limits (options.yamlfile).
    Anything else (not a regular file, not UTF-8, not a mapping, empty) is an OptionsError."""
    path = Path(path).expanduser()
    shown = show_name(str(path), 200)
    try:
        given = read_yaml_file(path)
    except YamlRefused as err:
        raise OptionsError(f"options file {shown} {err}") from None
    if given is None:  # an empty file is more likely a mistake than a wish for every default
        raise OptionsError(f"options file {shown} is empty (no key: value lines); start from options/train_student.yml")
    if not isinstance(given, dict):
        raise OptionsError(f"options file {shown} must hold key: value lines, but it holds only "
                           f"{show_value(given, 40)}; start from options/train_student.yml")
    return given


def options_text(opt: dict[str, Any]) -> str:
    """The options as an options file (YAML) holds them."""
    return yaml.safe_dump(opt, sort_keys=False)

