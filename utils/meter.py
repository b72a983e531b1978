"""Per-epoch statistics kept on the device: no host synchronisation inside the step.

Sums of every loss term (times batch size), top-1/top-5 hits of each accuracy the method names, the
image count, and the first step at which each term stopped being finite. The host reads them once
per print or epoch; `update` is plain tensor work, so it can sit inside a CUDA graph.
"""
from __future__ import annotations

import torch


def topk_hits(logits: torch.Tensor, target: torch.Tensor | None, k: int = 5) -> torch.Tensor:
    """[top-1 hits, top-k hits]; target None means column 0 (the contrastive positive)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == 0 if target is None else top == target[:, None]
    return torch.stack([hit[:, :1].any(dim=1).sum(), hit.any(dim=1).sum()])


class DeviceMeter:
    def __init__(self, accuracy_outputs: dict[str, str | None], device: torch.device):
        self.loss_names: list[str] = []  # learnt from the first step's output (eager, before any capture)
        self.accuracy_outputs = accuracy_outputs
        self.device = device
        self.loss_sums = torch.zeros(0, dtype=torch.float64, device=device)
        self.hits = torch.zeros(len(accuracy_outputs), 2, dtype=torch.long, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad_step = torch.full((0,), -1, dtype=torch.long, device=device)

    def reset(self) -> None:
        for t in (self.loss_sums, self.hits, self.count, self.steps):
            t.zero_()
        self.first_bad_step.fill_(-1)

    @torch.no_grad()
    def update(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        if not self.loss_names:
            self.loss_names = [k for k in out if k.startswith("loss")]
            self.loss_sums = torch.zeros(len(self.loss_names), dtype=torch.float64, device=self.device)
            self.first_bad_step = torch.full((len(self.loss_names),), -1, dtype=torch.long, device=self.device)
        batch = labels.shape[0]
        losses = torch.stack([out[name].detach().double() for name in self.loss_names])
        self.steps.add_(1)
        newly_bad = (~torch.isfinite(losses)) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(newly_bad, self.steps, self.first_bad_step))
        self.loss_sums.add_(losses * batch)
        for i, key in enumerate(self.accuracy_outputs.values()):
            logits = out[key or "ctr_logits"].detach()
            self.hits[i].add_(topk_hits(logits, None if key is None else labels))
        self.count.add_(batch)

    def read(self) -> dict[str, float]:
        """One host read: mean losses, accuracies in %, images, and any non-finite term."""
        loss_sums, hits, count, bad = (t.cpu() for t in (self.loss_sums, self.hits, self.count,
                                                          self.first_bad_step))
        n = max(int(count), 1)
        stats = {name: float(loss_sums[i]) / n for i, name in enumerate(self.loss_names)}
        for i, name in enumerate(self.accuracy_outputs):
            stats[f"{name}_top1"] = 100.0 * float(hits[i, 0]) / n
            stats[f"{name}_top5"] = 100.0 * float(hits[i, 1]) / n
        stats["images"] = int(count)
        stats["bad"] = {name: int(bad[i]) for i, name in enumerate(self.loss_names) if bad[i] >= 0}
        return stats
