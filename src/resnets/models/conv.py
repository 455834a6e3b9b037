"""A convolution that computes tiny feature maps on the CPU in bf16 as one matrix product."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Output maps of at most this many pixels take the matrix-product path on the CPU in bf16.
SMALL_MAP = 9


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, state-dict keys and results up to rounding) that, on the
    CPU in bf16, computes an output map of at most SMALL_MAP pixels as a single matrix product.

    Written by hand because it is measurably faster there: oneDNN's bf16 convolution kernels
    slow down on maps of a few pixels, and gathering the k*k shifted copies of the input (an
    im2col done with slices, cheap at this size) and multiplying once beats them on
    d2l_resnet18's 3x3 layer4 maps. In fp32 oneDNN's kernels are the faster ones on AVX2 and
    AVX-512 alike (the slicing's backward costs more than it saves), so fp32 keeps the
    ordinary path, as do larger maps and every other device. Measured in BENCHMARKS.md
    ("The small-map convolution, by precision").
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and _in_bf16(x) and self._as_matmul_fits(x):
            return self._forward_as_matmul(x)
        return super().forward(x)

    def _output_size(self, x: torch.Tensor) -> tuple[int, int]:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph, pw = self._int_padding()
        return (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1

    def _int_padding(self) -> tuple[int, int]:
        """The padding as numbers; a string padding ("same") never takes the matmul path."""
        assert not isinstance(self.padding, str)
        ph, pw = self.padding
        return int(ph), int(pw)

    def _as_matmul_fits(self, x: torch.Tensor) -> bool:
        plain = (
            self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        )
        return plain and math.prod(self._output_size(x)) <= SMALL_MAP

    def _forward_as_matmul(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph, pw = self._int_padding()
        oh, ow = self._output_size(x)
        padded = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # N, H, W, C
        taps = [
            padded[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            for i in range(kh)
            for j in range(kw)
        ]
        columns = torch.stack(taps, dim=3).reshape(n * oh * ow, kh * kw * c)
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, kh * kw * c)
        out = F.linear(columns, weight, self.bias)  # autocast runs it in bf16 like a conv
        return out.view(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)  # channels-last


def _in_bf16(x: torch.Tensor) -> bool:
    """Whether a CPU convolution of `x` computes in bf16: a bf16 input, or under bf16 autocast."""
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def plain_convs(model: nn.Module) -> nn.Module:
    """Turn every `Conv2d` of `model` into a plain `nn.Conv2d`, in place, and return `model`.

    The parameters and results are the same; only the CPU tiny-map path goes. Export
    (`torch.export`, ONNX), inference and reference benchmarks need the ordinary operator.
    """
    for module in model.modules():
        if type(module) is Conv2d:
            module.__class__ = nn.Conv2d  # type: ignore[assignment]
    return model
