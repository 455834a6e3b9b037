"""An exponential moving average of the weights, with a warm-up of its decay."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

TensorList = tuple[torch.Tensor, ...] | list[torch.Tensor]


def ema_with_warmup(decay: float) -> Callable[[TensorList, TensorList, torch.Tensor | int], None]:
    """An EMA update for AveragedModel whose decay ramps up as min(decay, (1 + n) / (10 + n)).

    torch's get_ema_multi_avg_fn uses the full decay from the first step, so the average stays
    mostly initial weights for thousands of steps (0.999 ** 1000 = 0.37): a short run would be
    evaluated on a nearly untrained network. The ramp (as in TensorFlow's
    ExponentialMovingAverage with num_updates) lets early averages follow the model.
    """

    @torch.no_grad()
    def update(averaged: TensorList, current: TensorList, num_averaged: torch.Tensor | int) -> None:
        n = int(num_averaged)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers such as BatchNorm's num_batches_tracked follow the model
            for avg, cur in zip(averaged, current, strict=True):
                avg.copy_(cur)

    return update


def build_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """The averaged copy of `model` (buffers too), or None when `decay` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=ema_with_warmup(decay), use_buffers=True)
