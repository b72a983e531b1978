"""What a sweep trains: its columns, each an options file x a variant x one combination of the `--set` grid
(`key=v1,v2`: one column per value), every one checked as main.py checks its options before anything is written.
The syntax of the grid and the variants: docs/sweeps.md.
"""
from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Options the sweep decides for every column: where its runs go, and what it resumes.
RESERVED = ("experiments_dir", "path.resume")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


class SweepError(ValueError):
    """Bad input to the sweep: one line saying what is wrong and how to fix it."""


@dataclass
class Column:
    """One job: main.py with these options for the sweep's trials."""
    name: str  # its folder under runs/, unique in the sweep
    source: Path  # the options file as given
    overrides: list[str]  # --set key=value, in order: the fixed items, the variant's, the grid's
    label: dict[str, str] = field(default_factory=dict)  # what sets it apart: variant and grid values
    epochs: int = 0  # as the options say: the column is finished when every trial has trained them


def split_values(text: str) -> list[str]:
    """`0.05,0.1` -> ['0.05', '0.1']; commas inside [], {} or quotes do not split."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    if quote or depth != 0 or any(not v.strip() for v in values):
        raise SweepError(f"--set value {text!r} is not a comma-separated list of values (an empty value, or an "
                         "unclosed bracket or quote); write a value holding a comma as [a,b] or 'a,b'")
    return [v.strip() for v in values]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`--set` items -> [(key, [value text, ...])], in the order given."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--set {item!r} must look like key=value or key=v1,v2,... (e.g. cocord.T=0.05,0.1)")
        if any(key == r or key.startswith(r + ".") for r in RESERVED):
            raise SweepError(f"--set {key} is the sweep's to decide (each column writes under the sweep folder's "
                             "runs/ and resumes its own trials); leave it out")
        if any(key == k for k, _ in grid):
            raise SweepError(f"--set {key} is given twice; give its values once, comma-separated")
        grid.append((key, split_values(text)))
    return grid


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`kd: distill=kd loss_kd=0.9` -> ('kd', ['distill=kd', 'loss_kd=0.9'])."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name or _UNSAFE.search(name):
        raise SweepError(f"--variant {text!r} must be NAME: key=value ... with a plain NAME (letters, digits, "
                         "._+=-), e.g. 'kd: distill=kd loss_kd=0.9'")
    try:
        overrides = shlex.split(rest)
    except ValueError as err:  # an unclosed quote
        raise SweepError(f"--variant {name}: {rest.strip()!r} cannot be read ({err}); close its quotes") from None
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key:
            raise SweepError(f"--variant {name}: {item!r} must look like key=value")
        if any(key == r or key.startswith(r + ".") for r in RESERVED):
            raise SweepError(f"--variant {name}: {key} is the sweep's to decide; leave it out")
    return name, overrides


def build_columns(files: list[str], grid_items: list[str], variant_texts: list[str]) -> list[Column]:
    """Every options file x variant x grid combination, named `NN-<file>[-<variant>][-key=value...]`."""
    if not files:
        raise SweepError("no options file given; e.g. python tools/sweep.py options/paper/*.yml -t 1-5")
    grid = parse_grid(grid_items)
    variants = [parse_variant(t) for t in variant_texts] or [("", [])]
    if len({name for name, _ in variants}) != len(variants):
        raise SweepError("two --variant share a name; give each its own")
    fixed = [f"{k}={vs[0]}" for k, vs in grid if len(vs) == 1]
    swept = [(k, vs) for k, vs in grid if len(vs) > 1]
    combos = list(itertools.product(files, variants, *[[(k, v) for v in vs] for k, vs in swept]))
    width = len(str(len(combos)))
    stems = [Path(f).stem for f in files]
    # Files of one name in several folders (options/paper/<method>/<pair>.yml) are told apart by their folder.
    shown = {f: f"{Path(f).parent.name}-{Path(f).stem}" if stems.count(Path(f).stem) > 1 else Path(f).stem
             for f in files}
    columns = []
    for index, (file, (variant, variant_set), *values) in enumerate(combos, 1):
        label = ({"variant": variant} if variant else {}) | {k: v for k, v in values}
        parts = [f"{index:0{width}d}", shown[file], variant, *(f"{k}={v}" for k, v in values)]
        name = _UNSAFE.sub("_", "-".join(p for p in parts if p))[:120]
        columns.append(Column(name, Path(file), fixed + variant_set + [f"{k}={v}" for k, v in values], label))
    return columns


def check_columns(columns: list[Column]) -> None:
    """main.py's own checks of each column's options, and their `epochs`; a SweepError names the column. The keys
    every method shares are checked first, without torch, so a typo is reported at once."""
    from options.method_keys import method_key_names
    from options.schema import OptionsError, build_options, read_options_file
    given: dict[Path, Any] = {}
    try:
        for column in columns:
            if column.source not in given:
                given[column.source] = read_options_file(column.source)
            build_options(given[column.source], column.overrides, partial=method_key_names() or True)
        from distiller import build_options as build_run_options  # imports torch and the methods
        for column in columns:
            options = build_run_options(given[column.source], column.overrides)
            column.epochs = options["epochs"]
            if options["path"]["resume"] is not None:  # it would continue that run, not the column's own
                raise OptionsError(f"path.resume is the sweep's to decide (each column resumes its own trials), "
                                   f"but the options say {options['path']['resume']!r}; leave it out")
    except OptionsError as err:
        label = " ".join(f"{k}={v}" for k, v in column.label.items())
        raise SweepError(f"column {column.name} ({column.source}{', ' + label if label else ''}): {err}") from None
