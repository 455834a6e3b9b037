"""BatchNorm + ReLU, eager against `torch.compile` of that region alone, forward and backward.

BatchNorm and ReLU are the step's memory-bound work that the convolutions do not absorb. On a
CPU PyTorch fuses them only through `torch.compile` (Inductor writes one C++ loop nest for
both); this times that against eager on the feature maps where the two networks of
benchmarks/compare.py spend most of that work, in the precision and memory format `resnets
train` chooses on this CPU. A region is worth compiling only if it is faster here.

    python benchmarks/regions.py                       # 20 timed passes per region and shape
    python benchmarks/regions.py --shapes 256x16x28x28 --steps 50 --json regions.json

Times vary on shared machines: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

from resnets.training.runtime import Runtime, autocast

# (N, C, H, W): layer1 of the chapter's network at 96 px, and of the fast recipe's at 28 px
SHAPES = ("256x64x24x24", "256x16x28x28")


def region(channels: int) -> nn.Module:
    """BatchNorm then an in-place ReLU, as in every residual block."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


def time_region(
    module: nn.Module, shape: tuple[int, ...], runtime: Runtime, steps: int
) -> tuple[float, float, torch.Tensor]:
    """Milliseconds per forward and per backward pass (mean of `steps` after 3 untimed), and
    the last input gradient."""
    generator = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if runtime.precision == "bf16" else torch.float32
    make = lambda: torch.randn(shape, generator=generator).to(  # noqa: E731
        dtype=dtype, memory_format=runtime.memory_format
    )
    x0, grad = make(), make()
    forward = backward = 0.0
    for i in range(3 + steps):
        x = x0.clone().requires_grad_()
        start = time.perf_counter()
        with autocast(runtime.device, runtime.precision):
            y = module(x)
        middle = time.perf_counter()
        y.backward(grad)
        end = time.perf_counter()
        if i >= 3:
            forward, backward = forward + middle - start, backward + end - middle
    assert x.grad is not None
    return 1e3 * forward / steps, 1e3 * backward / steps, x.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="NxCxHxW feature maps")
    parser.add_argument("--steps", type=int, default=20, help="timed passes per measurement")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    # as `resnets train` resolves them; on the CPU this also keeps freed memory (no page faults)
    runtime = Runtime.resolve("cpu", "auto", None)
    how = f"{runtime.precision}, {'channels-last' if runtime.channels_last else 'NCHW'}"
    print(f"# {date.today()}, {os.cpu_count()} cores, torch {torch.__version__}, {how}, "
          f"{args.steps} timed passes")  # fmt: skip
    print("| BN+ReLU on | eager fwd / bwd ms | compiled fwd / bwd ms | compiled/eager "
          "| grads off by > 1% of max |")  # fmt: skip
    print("|---|--:|--:|--:|--:|")
    rows = []
    for text in args.shapes:
        shape = tuple(int(side) for side in text.split("x"))
        eager = region(shape[1]).to(memory_format=runtime.memory_format)
        compiled = torch.compile(region(shape[1]).to(memory_format=runtime.memory_format))
        e_fwd, e_bwd, e_grad = time_region(eager, shape, runtime, args.steps)
        c_fwd, c_bwd, c_grad = time_region(compiled, shape, runtime, args.steps)
        ratio = (c_fwd + c_bwd) / (e_fwd + e_bwd)
        # bf16 rounding may put an element on the other side of the ReLU: count, not max
        tolerance = 0.01 * e_grad.float().abs().max().item()
        differ = int(((e_grad.float() - c_grad.float()).abs() > tolerance).sum())
        print(f"| {text} | {e_fwd:.2f} / {e_bwd:.2f} | {c_fwd:.2f} / {c_bwd:.2f} | "
              f"{ratio:.2f}x | {differ} of {e_grad.numel()} |")  # fmt: skip
        rows.append({"shape": text, "eager_forward_ms": e_fwd, "eager_backward_ms": e_bwd,
                     "compiled_forward_ms": c_fwd, "compiled_backward_ms": c_bwd,
                     "compiled_over_eager": ratio, "grads_differing": differ})  # fmt: skip
    if args.json:
        figures = {"precision": runtime.precision, "rows": rows}
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
