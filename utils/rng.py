"""Random state: saved with a checkpoint, and kept per trial so that trials trained together draw exactly
what each would draw alone."""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CUDA generators too


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": [list(t) if isinstance(t, tuple) else t for t in random.getstate()],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrialRNG:
    """A trial's own random state: the global generators as a run of this trial alone would have them.

    Everything random a trial does (its initialisation, each epoch's data seed) happens inside `active()`,
    so a trial trained in a group draws exactly the numbers it draws alone with the same seed."""

    def __init__(self, seed: int | None = None, state: dict[str, Any] | None = None):
        self.seed, self._state = seed, state

    @property
    def state(self) -> dict[str, Any]:
        """Made from the seed when first needed: a run refused before it trains seeds nothing (seeding every
        generator takes milliseconds, minutes for thousands of trials)."""
        if self._state is None:
            outer = rng_state()
            seed_everything(self.seed)
            self._state = rng_state()
            set_rng_state(outer)
        return self._state

    @contextmanager
    def active(self) -> Iterator[None]:
        outer = rng_state()
        set_rng_state(self.state)
        try:
            yield
        finally:
            self._state = rng_state()
            set_rng_state(outer)

    def draw_seed(self) -> int:
        """A seed for one epoch of this trial's data (order and augmentation)."""
        with self.active():
            return int(torch.randint(0, 2**62, ()).item())
