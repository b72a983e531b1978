"""Which options decide a run's result: two runs that agree on these have the same settings."""
from __future__ import annotations

import re
from typing import Any

# Keys that say where a run reads and writes and how fast it goes, not what it computes: two runs that differ
# only in these have the same settings (summaries average them, a new run may replace the other's folder).
NEUTRAL_KEYS = ("gpu", "data_folder", "download", "num_workers", "pin_memory", "print_freq", "experiments_dir",
                "experiment_name", "path", "seed", "trial", "speed.loader", "speed.cuda_graph", "speed.compile",
                "speed.channels_last", "speed.streams")


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


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


def result_settings(opt: dict[str, Any]) -> dict[str, Any]:
    """The options that decide a run's result, flattened, values normalised (1 == 1.0 == '1e0')."""
    def neutral(key: str) -> bool:
        return any(key == n or key.startswith(n + ".") for n in NEUTRAL_KEYS)
    return {k: normalize(v) for k, v in flatten(opt).items() if not neutral(k)}
