"""The names methods may add to an options file, read from distiller/'s source without importing it.

Importing the methods imports torch (seconds); `main.py` checks the common keys before that. To report a
misspelt top-level key at once too, it needs to know which unknown keys could still be a method's: every string
that is a dict key anywhere in distiller/*.py. Over-inclusive on purpose: a key found here is only deferred to
the full check (distiller.base), never accepted by this one.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

DISTILLER = Path(__file__).resolve().parents[1] / "distiller"


def method_key_names(folder: Path = DISTILLER) -> set[str] | None:
    """The names, or None where a method file cannot be read (then every unknown key waits for the methods)."""
    names = _parsed(folder)
    return None if names is None else set(names)


@functools.cache  # parsed once per process: a sweep checks hundreds of columns' options
def _parsed(folder: Path) -> frozenset[str] | None:
    names: set[str] = set()
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            return None
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                names |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return frozenset(names)
