"""A run's options: the common keys (options/schema.py) joined with every method's own (distiller/)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distiller import method_class, option_schema
from options import schema


def build_options(given: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults, the given values and `key=value` overrides, checked key by key and by the chosen method."""
    opt = schema.build_options(given, overrides, option_schema())
    method_class(opt["distill"]).check_options(opt)
    return opt


def load_options(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    return build_options(schema.read_options_file(path), overrides)
