"""Top-1 / top-5 accuracy of a classifier on in-memory images (a float tensor, or a split's
:class:`~searchprune.data.Images`, normalised batch by batch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from searchprune.data._bundle import Images

__all__ = ["evaluate", "evaluate_chunks"]


def evaluate_chunks(
    model: nn.Module,
    x: torch.Tensor | Images,
    y: torch.Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    on_chunk: Callable[[int, float], bool] | None = None,
) -> tuple[float, float, int, bool]:
    """Accuracy batch by batch: ``(top1, top5, images_seen, stopped_early)``, in percent.

    After each batch ``on_chunk(images_seen, top1_so_far)`` may return True to stop early (an
    Optuna pruner deciding the candidate is hopeless); the accuracies are then over the images
    seen. The model runs in eval mode; its train/eval mode is restored afterwards.
    """
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    hit1 = hit5 = seen = 0
    stopped = False
    try:
        with torch.inference_mode():
            for start in range(0, len(y), batch_size):
                xb = x[start : start + batch_size].to(device, non_blocking=True)
                yb = y[start : start + batch_size].to(device, non_blocking=True)
                logits = model(xb)
                k = min(5, logits.shape[1])
                correct = logits.topk(k, dim=1).indices == yb[:, None]
                hit1 += int(correct[:, 0].sum())
                hit5 += int(correct.any(dim=1).sum())
                seen += len(yb)
                if on_chunk is not None and seen < len(y) and on_chunk(seen, 100.0 * hit1 / seen):
                    stopped = True
                    break
    finally:
        model.train(was_training)
    return 100.0 * hit1 / seen, 100.0 * hit5 / seen, seen, stopped


def evaluate(
    model: nn.Module,
    x: torch.Tensor | Images,
    y: torch.Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Return (top-1, top-5) accuracy in percent; the model runs in eval mode and its
    train/eval mode is restored afterwards. Top-5 is top-k with k = min(5, classes)."""
    top1, top5, _, _ = evaluate_chunks(model, x, y, batch_size=batch_size, device=device)
    return top1, top5
