"""One optimizer step, as a function of the parts it touches and the batch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from resnets.data.augment import soft_accuracy_count
from resnets.errors import ResnetsError
from resnets.training.memory import MemoryFallback, is_out_of_memory, split_sizes
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
    world: int = 1  # processes whose gradients DistributedDataParallel averages


def train_step(
    parts: StepParts, x: torch.Tensor, y: torch.Tensor, total: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch: (summed loss, correct count), both left on the device.

    `y` holds class indices, or soft targets (N, classes) from mixup or CutMix. When a batch
    does not fit in memory its gradients are accumulated over micro-batches, each weighted by
    its share, so the optimizer steps on the same batch either way. No micro-batch is smaller
    than BatchNorm needs (`parts.fallback.least`, see `split_sizes`).

    Data-parallel (`parts.world` > 1, `step_model` a DistributedDataParallel): `x` is this
    process's share of a batch of `total` images. Each micro-batch's mean loss is weighted by
    its share of the whole batch times the world size, because DDP averages the gradients of
    the processes: (1 / world) * sum of world * (rows / total) * mean gradient is the gradient
    of the whole batch's mean loss, as one process would compute it. Gradients are exchanged
    only on the last micro-batch (`no_sync` on the others).
    """
    n = len(x)
    total = total or n

    def accumulate(chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=parts.device)
        correct = torch.zeros((), dtype=torch.long, device=parts.device)
        sizes = split_sizes(n, chunk, parts.fallback.least)
        pieces = list(zip(x.split(sizes), y.split(sizes), strict=True))
        for i, (xs, ys) in enumerate(pieces):
            last = i == len(pieces) - 1
            with _exchange(parts.step_model, last):
                with autocast(parts.device, parts.precision):
                    logits = parts.step_model(xs)
                loss = F.cross_entropy(logits.float(), ys, label_smoothing=parts.label_smoothing)
                try:
                    parts.scaler.scale(loss * (len(xs) * parts.world / total)).backward()
                except Exception as error:
                    if last and parts.world > 1 and is_out_of_memory(error):
                        raise ExchangeOutOfMemory(len(xs)) from error
                    raise
            loss_sum += loss.detach() * len(xs)
            correct += soft_accuracy_count(logits, ys)
        return loss_sum, correct

    stats = parts.fallback.run(n, accumulate, "micro-batch")
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.model)
    return stats


class ExchangeOutOfMemory(ResnetsError):
    """Out of memory in the backward pass that exchanges gradients with the other processes.

    Some of the exchanges may have started, so trying again with a smaller micro-batch here
    would leave this process's exchanges out of step with the others' and hang the job: it
    stops instead, naming a micro-batch that fits.
    """

    def __init__(self, size: int) -> None:
        smaller = max(1, size // 2)
        super().__init__(
            f"out of memory in a micro-batch of {size} while exchanging gradients with the other "
            f"processes; start again with --micro-batch {smaller} (or resume with it)"
        )


def _exchange(model: nn.Module, last: bool) -> contextlib.AbstractContextManager[object]:
    """DDP's `no_sync` (gradients kept local) on every micro-batch but the last."""
    no_sync = getattr(model, "no_sync", None)
    if last or no_sync is None:
        return contextlib.nullcontext()
    return no_sync()
