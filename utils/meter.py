"""Per-epoch statistics kept on the device: no host synchronisation inside the step.

For each trial: sums of every loss term (times batch size), top-1/top-5 hits of each accuracy the method
names, the image count, and the first step at which each term stopped being finite. The host reads them
once per print or epoch; `update` is plain tensor work, so it can sit inside a CUDA graph.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch


class Accuracy(NamedTuple):
    """An accuracy a method logs: the output holding logits, and what is correct (`labels`, or `first`:
    column 0, the positive of a contrastive row)."""
    output: str
    target: str = "labels"


def topk_hits(logits: torch.Tensor, target: torch.Tensor | None, k: int = 5) -> torch.Tensor:
    """[..., 2]: top-1 and top-k hits over the batch (dim -2); target None means column 0."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    hit = top == 0 if target is None else top == target.unsqueeze(-1)
    return torch.stack([hit[..., :1].any(dim=-1).sum(dim=-1), hit.any(dim=-1).sum(dim=-1)], dim=-1)


class DeviceMeter:
    def __init__(self, accuracies: dict[str, Accuracy], device: torch.device, trials: int = 1):
        self.loss_names: list[str] = []  # learnt from the first step's output (eager, before any capture)
        self.accuracies = accuracies
        self.device, self.trials = device, trials
        self.loss_sums = torch.zeros(trials, 0, dtype=torch.float64, device=device)
        self.hits = torch.zeros(trials, len(accuracies), 2, dtype=torch.long, device=device)
        self.count = torch.zeros(trials, dtype=torch.long, device=device)
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad_step = torch.full((trials, 0), -1, dtype=torch.long, device=device)

    def reset(self) -> None:
        for t in (self.loss_sums, self.hits, self.count, self.steps):
            t.zero_()
        self.first_bad_step.fill_(-1)

    @torch.no_grad()
    def update(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """`out` as a method returns it: each tensor with a leading trial dimension, or none for one trial."""
        n = self.trials
        if not self.loss_names:
            self.loss_names = [k for k in out if k.startswith("loss")]
            self.loss_sums = torch.zeros(n, len(self.loss_names), dtype=torch.float64, device=self.device)
            self.first_bad_step = torch.full((n, len(self.loss_names)), -1, dtype=torch.long, device=self.device)
        batch = labels.shape[-1]
        losses = torch.stack([out[name].detach().double().reshape(n) for name in self.loss_names], dim=1)
        self.steps.add_(1)
        newly_bad = (~torch.isfinite(losses)) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(newly_bad, self.steps, self.first_bad_step))
        self.loss_sums.add_(losses * batch)
        for i, acc in enumerate(self.accuracies.values()):
            logits = out[acc.output].detach().reshape(n, batch, -1)
            target = labels.reshape(n, batch) if acc.target == "labels" else None
            self.hits[:, i].add_(topk_hits(logits, target))
        self.count.add_(batch)

    def read(self) -> list[dict[str, Any]]:
        """One host read: per trial, mean losses, accuracies in %, images, and any term that stopped being
        finite (name -> first step)."""
        loss_sums, hits, count, bad = (t.cpu() for t in (self.loss_sums, self.hits, self.count,
                                                          self.first_bad_step))
        stats = []
        for k in range(self.trials):
            n = max(int(count[k]), 1)
            s: dict[str, Any] = {name: float(loss_sums[k, i]) / n for i, name in enumerate(self.loss_names)}
            for i, name in enumerate(self.accuracies):
                s[f"{name}_top1"] = 100.0 * float(hits[k, i, 0]) / n
                s[f"{name}_top5"] = 100.0 * float(hits[k, i, 1]) / n
            s["images"] = int(count[k])
            s["bad"] = {name: int(bad[k, i]) for i, name in enumerate(self.loss_names) if bad[k, i] >= 0}
            stats.append(s)
        return stats
