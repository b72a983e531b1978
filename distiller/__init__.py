"""Distillation methods: one file each, registered under its `distill:` name.

Every module in this folder is imported here, so a new method is one new file: it registers itself and
declares its options, logged terms and state (see distiller/base.py); nothing else needs to change. A run's
options are the common keys joined with the chosen method's own: `build_options`, `load_options`.
"""
import importlib
import pkgutil

from distiller.base import (
    METHODS,
    Distiller,
    build_options,
    complete_options,
    load_options,
    method_class,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from distiller.cocord import CoCoRD  # noqa: E402  (the name users of the published code import)

__all__ = ["METHODS", "CoCoRD", "Distiller", "build_options", "complete_options", "load_options", "method_class",
           "register"]
