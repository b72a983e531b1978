"""Test loss and top-1/top-5 accuracy of a network on a stream of test batches."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from utils.meter import topk_hits


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module,
             batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             reduce: Callable[[torch.Tensor], None] | None = None) -> dict[str, float]:
    """Loss and top-1/top-5 (%) of `model` in eval mode; one host read at the end. `reduce` sums the totals
    across processes when each one saw a shard of the test set."""
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    totals = None
    for images, labels in batches:
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        batch = torch.cat([loss.double().view(1), topk_hits(logits, labels).double(),
                           torch.tensor([labels.shape[0]], dtype=torch.float64, device=labels.device)])
        totals = batch if totals is None else totals + batch
    if isinstance(model, torch.nn.Module):
        model.train(was_training)
    if totals is None:
        raise ValueError("the test set is empty")
    if reduce is not None:
        reduce(totals)
    loss, top1, top5, count = totals.tolist()
    return {"loss": loss / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}
