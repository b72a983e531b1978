"""Distillation methods. Each lives in one file and registers itself under its `distill:` name."""
from distiller import cocord, kd, vanilla  # noqa: F401  (registration)
from distiller.base import METHODS, Distiller, build_distiller, register
from distiller.cocord import CoCoRD

__all__ = ["METHODS", "Distiller", "build_distiller", "register", "CoCoRD"]
