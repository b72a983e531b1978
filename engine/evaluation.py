"""Test loss and top-1/top-5 accuracy on a stream of test batches, of one network or of several trials."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from utils.meter import topk_hits

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def in_eval_mode(module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`fn` run with `module` in eval mode, its mode restored after."""
    def run(images: torch.Tensor) -> torch.Tensor:
        was = module.training
        module.eval()
        try:
            return fn(images)
        finally:
            module.train(was)
    return run


@torch.no_grad()
def evaluate_trials(logits_of: Callable[[torch.Tensor], torch.Tensor], batches: Batches,
                    reduce: Callable[[torch.Tensor], None] | None = None) -> list[dict[str, float]]:
    """Per trial: loss and top-1/top-5 (%), from `logits_of(images)` shaped [trials, B, classes]; one host
    read at the end. `reduce` sums the totals across processes when each saw a shard of the test set."""
    totals = None
    for images, labels in batches:
        logits = logits_of(images)
        n, batch = logits.shape[0], labels.shape[0]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.repeat(n), reduction="none").view(n, batch)
        hits = topk_hits(logits, labels.expand(n, batch))
        count = torch.full((n, 1), batch, dtype=torch.float64, device=labels.device)
        step = torch.cat([loss.double().sum(1, keepdim=True), hits.double(), count], dim=1)
        totals = step if totals is None else totals + step
    if totals is None:
        raise ValueError("the test set is empty")
    if reduce is not None:
        reduce(totals)
    return [{"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}
            for loss, top1, top5, count in totals.tolist()]


def evaluate(model: torch.nn.Module, batches: Batches, reduce: Callable[[torch.Tensor], None] | None = None
             ) -> dict[str, Any]:
    """One network's test loss and accuracy, in eval mode."""
    return evaluate_trials(in_eval_mode(model, lambda images: model(images).unsqueeze(0)), batches, reduce)[0]
