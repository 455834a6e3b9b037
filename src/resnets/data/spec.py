"""A data set described as data: classes, channels, size, pixel statistics, mirror symmetry.

The spec travels with every run (config, checkpoint), so a reader of a trained network knows
how to feed it without the training code or the data files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class DataSpec:
    """What a model trained on a data set needs to know about its images.

    `mean` and `std` are per channel on the [0, 1] scale, over the training split.
    `mirror_ok` says whether a left-right mirror image keeps its label (not for digits), and
    `mirror_why` who says so, in words, for the line a run starts with.
    `pad` is the random-shift crop's reach in pixels at the native `size`.
    """

    name: str
    classes: tuple[str, ...]
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mirror_ok: bool = True
    pad: int = 2
    mirror_why: str = field(default="", compare=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"{self.name}: {self.channels} channels but {len(self.mean)} means and "
                f"{len(self.std)} standard deviations"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), for YAML, JSON and weights-only checkpoints."""
        data = asdict(self)
        for key in ("classes", "mean", "std"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        data = dict(data)
        for key in ("classes", "mean", "std"):
            data[key] = tuple(data[key])
        return cls(**data)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W) on the [0, 1] scale.

    Summed in float64 chunk by chunk, so a memory-mapped set is read once without a float copy.
    """
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].to(torch.float64) / 255
        total += part.sum((0, 2, 3))
        squares += part.square().sum((0, 2, 3))
    count = max(1, images.numel() // channels)
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
