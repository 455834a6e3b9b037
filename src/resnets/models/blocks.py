"""Residual blocks: the chapter's basic block, the bottleneck, and their pre-activation forms.

Every block takes its input and output channels and its stride explicitly, so its parameters
and output shape are known before any forward pass. Attribute names follow torchvision
(`conv1`, `bn1`, ..., `downsample`) so state dicts are interchangeable.

Shortcut kinds, after He et al. 2015, section 3.3:
- "A": identity; when the shape changes, subsample spatially and pad the new channels with
  zeros. Adds no parameters (the paper's CIFAR networks).
- "B": identity; a 1x1 projection only when the shape changes (torchvision, the chapter).
- "C": always a 1x1 projection.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from resnets.models.conv import Conv2d

Shortcut = Literal["A", "B", "C"]
SHORTCUTS: tuple[str, ...] = ("A", "B", "C")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


class PadShortcut(nn.Module):
    """Option A: take every `stride`-th pixel and append zero channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("a zero-padding shortcut cannot reduce channels")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels)) if self.extra_channels else x


def make_shortcut(
    in_channels: int,
    out_channels: int,
    stride: int,
    kind: Shortcut,
    *,
    norm: bool = True,
    bias: bool = False,
) -> nn.Module | None:
    """The shortcut branch of a block; None means identity.

    A projection is `Sequential(conv1x1[, BatchNorm])`, i.e. keys `downsample.0` and
    `downsample.1` as in torchvision. `norm=False` gives the chapter's bare 1x1 convolution
    and the pre-activation blocks' projection (which sees already-normalised input).
    """
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, not {kind!r}")
    reshapes = stride != 1 or in_channels != out_channels
    if kind == "A":
        return PadShortcut(in_channels, out_channels, stride) if reshapes else None
    if kind == "B" and not reshapes:
        return None
    layers: list[nn.Module] = [conv1x1(in_channels, out_channels, stride, bias=bias)]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a ReLU between; the shortcut is added before the last ReLU.

    `bias=True, projection_norm=False` is the chapter's `Residual` exactly (its convolutions
    carry biases and its 1x1 projection has no BatchNorm).
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        bias: bool = False,
        projection_norm: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, bias=bias)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(
            in_channels, out_channels, stride, shortcut, norm=projection_norm, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (by `expansion`), each followed by BN.

    The stride sits on the 3x3 convolution ("ResNet v1.5", as torchvision does);
    `stride_on="1x1"` puts it on the first 1x1 as in the original paper.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        bias: bool = False,
        projection_norm: bool = True,
        stride_on: Literal["3x3", "1x1"] = "3x3",
    ) -> None:
        super().__init__()
        if stride_on not in ("3x3", "1x1"):
            raise ValueError(f"stride_on must be '3x3' or '1x1', not {stride_on!r}")
        mid = out_channels // self.expansion
        self.conv1 = conv1x1(in_channels, mid, stride if stride_on == "1x1" else 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride if stride_on == "3x3" else 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, out_channels, bias=bias)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(
            in_channels, out_channels, stride, shortcut, norm=projection_norm, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


class PreActBlock(nn.Module):
    """He et al. 2016 ("Identity mappings"): BN -> ReLU -> conv, twice, and a clean identity path.

    A projection shortcut takes the input after the first BN-ReLU, as in the paper's code.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, bias=bias)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = make_shortcut(
            in_channels, out_channels, stride, shortcut, norm=False, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: (BN -> ReLU -> conv) for 1x1, 3x3 (strided), 1x1."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        shortcut: Shortcut = "B",
        bias: bool = False,
    ) -> None:
        super().__init__()
        mid = out_channels // self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, mid, bias=bias)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride, bias=bias)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, out_channels, bias=bias)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = make_shortcut(
            in_channels, out_channels, stride, shortcut, norm=False, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBlock,
    "preact_bottleneck": PreActBottleneck,
}
