"""The learning rate as a pure function of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

from resnets.training.config import TrainConfig


def learning_rate(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate at optimizer step `step` (0-based).

    Written out rather than taken from torch.optim.lr_scheduler so that the step number alone
    gives the rate. constant: lr throughout. cosine: linear warm-up over `warmup_epochs`, then
    cosine to 0. onecycle: linear rise from lr/25 over the first quarter, then cosine to 0.
    step: lr/10 during `warmup_epochs`, then lr divided by 10 after each of `milestones`
    (epochs), as He et al. 2015 train their CIFAR networks.
    """
    peak = config.lr
    if config.schedule == "constant":
        return peak
    if config.schedule == "step":
        if step < round(config.warmup_epochs * steps_per_epoch):
            return peak / 10
        passed = sum(step >= round(m * steps_per_epoch) for m in config.milestones)
        return peak * 0.1**passed
    if config.schedule == "cosine":
        warmup = round(config.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return peak * (step + 1) / warmup
    else:
        warmup = max(1, total_steps // 4)
        if step < warmup:
            return peak * (0.04 + 0.96 * step / warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
