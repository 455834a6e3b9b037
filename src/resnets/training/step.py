"""One optimizer step, as a function of the parts it touches and the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from resnets.data.augment import soft_accuracy_count
from resnets.training.memory import MemoryFallback
from resnets.training.runtime import autocast


@dataclass
class StepParts:
    """What a training step reads and updates. `step_model` may be the compiled `model`."""

    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    fallback: MemoryFallback
    ema: AveragedModel | None
    device: torch.device
    precision: str
    label_smoothing: float = 0.0


def train_step(
    parts: StepParts, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch: (summed loss, correct count), both left on the device.

    `y` holds class indices, or soft targets (N, classes) from mixup or CutMix. When a batch
    does not fit in memory its gradients are accumulated over micro-batches, each weighted by
    its share, so the optimizer steps on the same batch either way.
    """
    n = len(x)

    def accumulate(chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=parts.device)
        correct = torch.zeros((), dtype=torch.long, device=parts.device)
        for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
            with autocast(parts.device, parts.precision):
                logits = parts.step_model(xs)
            loss = F.cross_entropy(logits.float(), ys, label_smoothing=parts.label_smoothing)
            parts.scaler.scale(loss * (len(xs) / n)).backward()
            loss_sum += loss.detach() * len(xs)
            correct += soft_accuracy_count(logits, ys)
        return loss_sum, correct

    stats = parts.fallback.run(n, accumulate, "micro-batch")
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.model)
    return stats
