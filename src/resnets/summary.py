"""Layer-by-layer shapes, parameter counts and multiply-accumulates of a network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnets.errors import UsageError


def count_params(model: nn.Module) -> int:
    """Learnable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def check_input_size(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int, int]:
    """Validate a (C, H, W) input size against the model; raise UsageError naming the problem."""
    if len(input_size) != 3 or any(
        not isinstance(v, int) or not 1 <= v < 2**31 for v in input_size
    ):
        shown = " ".join(str(v) if len(str(v)) <= 20 else f"{str(v)[:17]}..." for v in input_size)
        raise UsageError(
            f"input size must be three positive integers C H W below 2**31, not {shown}"
        )
    channels = getattr(model, "in_channels", None)
    if channels is not None and input_size[0] != channels:
        raise UsageError(
            f"the model takes {channels}-channel images, not {input_size[0]}; "
            f"use --input-size {channels} {input_size[1]} {input_size[2]}, "
            "or build it with --in-channels"
        )
    return input_size[0], input_size[1], input_size[2]


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one image, by torch.utils.flop_counter.

    The counter reports FLOPs of convolutions and matrix products as 2 x MACs; BatchNorm,
    ReLU, pooling and additions are not counted, as in the paper's figures.
    """
    return summarize(model, input_size)["macs"]


def summarize(model: nn.Module, input_size: Sequence[int], depth: int = 1) -> dict[str, Any]:
    """Run one forward pass on a (1, C, H, W) zero tensor and record every module's output.

    `depth` 1 lists the top-level layers (stem, stages, pool, classifier); 2 adds each block.
    Returns {"layers": [{"name", "output_shape", "params"}], "params", "macs"}.
    """
    size = check_input_size(model, input_size)
    if not (isinstance(depth, int) and depth >= 1):
        raise UsageError(f"depth must be 1 (layers), 2 (also each block) or more, not {depth}")
    layers: list[dict[str, Any]] = []
    handles = []

    def record(name: str, module: nn.Module) -> None:
        def hook(_: nn.Module, __: Any, output: torch.Tensor) -> None:
            layers.append(
                {"name": name, "output_shape": list(output.shape), "params": count_params(module)}
            )

        handles.append(module.register_forward_hook(hook))

    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            record(name, module)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, *size, device=next(model.parameters()).device))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise UsageError(
            f"input size {' '.join(map(str, size))} does not pass through the network: {first_line}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {"layers": layers, "params": count_params(model), "macs": counter.get_total_flops() // 2}


def format_count(n: float) -> str:
    """11689512 -> '11.69M', 1814073344 -> '1.81G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as an aligned text table followed by the totals."""
    rows = [("layer", "output shape", "params")]
    rows += [
        (r["name"], str(tuple(r["output_shape"])), f"{r['params']:,}") for r in summary["layers"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("-" * len(lines[0]))
    lines.append(f"parameters: {summary['params']:,} ({format_count(summary['params'])})")
    lines.append(f"MACs:       {summary['macs']:,} ({format_count(summary['macs'])})")
    return "\n".join(lines)
