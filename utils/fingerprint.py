"""A cheap number that changes with any value of a tensor (and with their order): compared, not stored."""
from __future__ import annotations

import torch


@torch.no_grad()
def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """A float64 scalar on t's device; equal tensors give equal fingerprints."""
    return (t.double() * (1 + torch.arange(t.numel(), device=t.device).view(t.shape) % 7)).sum()
