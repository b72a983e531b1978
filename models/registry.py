"""Name -> constructor table. Family modules register themselves; nothing dispatches on names."""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TypeVar

from .base import ZooModel

Builder = Callable[..., ZooModel]
F = TypeVar("F", bound=Builder)

# Insertion order is registration order (see models/__init__.py): the 22 CRD names first.
MODEL_REGISTRY: dict[str, Builder] = {}


def register(name: str, builder: Builder | None = None) -> Callable[[F], F] | Builder:
    """`register(name, builder)` or `@register(name)`; each builder takes `num_classes`."""

    def add(fn: F) -> F:
        if name in MODEL_REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        MODEL_REGISTRY[name] = fn
        return fn

    return add if builder is None else add(builder)


_LOOKALIKES = str.maketrans("oli", "011")  # "resnet2O" is a typo of "resnet20"


def closest_model_name(name: str) -> str | None:
    """The registered name most like `name` (ignoring case and O/0, l/1 slips), or None if none is close."""
    def norm(s: str) -> str:
        return s.lower().translate(_LOOKALIKES)

    scored = [
        (difflib.SequenceMatcher(None, norm(name), norm(n)).ratio(), difflib.SequenceMatcher(None, name, n).ratio(), n)
        for n in MODEL_REGISTRY
    ]
    best = max(scored, default=None)
    return best[2] if best is not None and best[0] >= 0.6 else None


def unknown_model_message(name: str) -> str:
    """One line naming the closest valid name and listing all of them."""
    close = closest_model_name(name)
    hint = f"did you mean {close!r}? " if close else ""
    return f"unknown model {name!r}; {hint}valid: {', '.join(MODEL_REGISTRY)}"


def build_model(name: str, num_classes: int = 100) -> ZooModel:
    """Build a zoo model by name with its default init (as RepDistiller's model_dict[name](num_classes=...))."""
    try:
        builder = MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(unknown_model_message(name)) from None
    return builder(num_classes=num_classes)
