"""A run's options: the common keys (options/schema.py, checked by main.py before torch is imported) joined with
the chosen method's own (declared in its file under distiller/), each key validated once."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distiller import METHODS, method_class
from options import schema
from options.method_keys import method_key_names


def complete_options(common: dict[str, Any], deferred: dict[str, Any]) -> dict[str, Any]:
    """`common` as main.py validated it, plus the keys it set aside (`deferred`, raw): those of the chosen method
    are validated now; those of other methods are dropped (they would do nothing in this run); any other is an
    error that names the closest valid key."""
    cls = method_class(common["distill"])
    known = {key for c in METHODS.values() for key in c.options}
    unknown = [key for key in deferred if key not in known]
    if unknown:
        def hint(key: str) -> str:
            close = schema.did_you_mean(key, list(common) + sorted(known))
            return close if "did you mean" in close else schema.did_you_mean(key, list(common) + list(cls.options))
        raise schema.OptionsError("; ".join(f"unknown option '{schema.show_name(str(k))}'{hint(str(k))}"
                                            for k in unknown))
    own = schema.build_options({k: v for k, v in deferred.items() if k in cls.options}, (), cls.options)
    return {**common, **own, "distill": cls.name}


def build_options(given: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults, the given values and `key=value` overrides, checked key by key (the rules between keys are the
    method's `check_options`, which the run applies once it knows how many processes share a batch)."""
    deferred: dict[str, Any] = {}
    common = schema.build_options(given, overrides, partial=method_key_names() or True, deferred=deferred)
    return complete_options(common, deferred)


def load_options(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    return build_options(schema.read_options_file(path), overrides)
