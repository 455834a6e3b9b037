"""Test-set evaluation: loss, accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnets.training.memory import MemoryFallback
from resnets.training.runtime import autocast


def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, tta: bool
) -> torch.Tensor:
    """Float32 logits; with `tta`, the mean of the logits of the image and its mirror image."""
    with autocast(device, precision):
        logits = model(x).float()
        if tta:
            logits = (logits + model(x.flip(-1)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    precision: str = "fp32",
    tta: bool = False,
    num_classes: int = 10,
    fallback: MemoryFallback | None = None,
) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and the confusion matrix (rows: true class, cols: predicted).

    A batch that does not fit in memory is split (and the split remembered) rather than failing.
    """
    was_training = model.training
    model.eval()
    fallback = fallback or MemoryFallback()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)

    def run(x: torch.Tensor, y: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.cat(
            [predict(model, part, device, precision, tta) for part in x.split(chunk)]
        )
        loss = F.cross_entropy(logits, y, reduction="sum")
        return loss, y * num_classes + logits.argmax(1)

    for x, y in batches:
        loss, cells = fallback.run(len(x), lambda chunk, x=x, y=y: run(x, y, chunk), "eval batch")
        loss_sum += loss
        confusion += torch.bincount(cells, minlength=num_classes * num_classes)
    model.train(was_training)
    matrix = confusion.view(num_classes, num_classes).cpu()
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("evaluation saw no images")
    per_class = matrix.diagonal() / matrix.sum(1).clamp(min=1)
    return {
        "test_loss": float(loss_sum) / total,
        "test_acc": float(matrix.diagonal().sum()) / total,
        "per_class": per_class.tolist(),
        "confusion": matrix.tolist(),
        "images": total,
    }
