"""The small-map convolution (resnets.models.conv) against oneDNN's own, by network and precision.

Times training steps (forward, backward, SGD) and evaluation of each network twice in one
process, on the same random batch: with resnets' Conv2d, which computes output maps of at most
SMALL_MAP pixels as one matrix product where it computes in bf16, with that path forced on
in fp32 too, and with every convolution a plain `nn.Conv2d`. bf16 is timed only where this CPU
computes it natively. Prints a Markdown table; ratios above 1 mean the matrix product is faster.

    python benchmarks/small_map.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/small_map.py               # the kernels of an AVX2-only CPU
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnets import create_model
from resnets.models import conv
from resnets.models.conv import plain_convs
from resnets.training.runtime import cpu_has_native_bf16, cpu_kernels

# name: (model, options, batch, side); the fp32 and bf16 recipes' networks and the chapter's
NETWORKS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "quick and fp32 fast net, 28px": (
        "resnet18", {"small_input": True, "width": 0.25, "stem_stride": 2}, 512, 28,
    ),
    "bf16 fast net, 28px": ("resnet18", {"small_input": True, "width": 0.25}, 256, 28),
    "d2l_resnet18, 96px": ("d2l_resnet18", {}, 256, 96),
}  # fmt: skip


@contextmanager
def matmul_path_in_fp32() -> Iterator[None]:
    """Let resnets' Conv2d take its matrix-product path in fp32 as well."""
    original = conv._in_bf16
    conv._in_bf16 = lambda x: True
    try:
        yield
    finally:
        conv._in_bf16 = original


def rates(model: nn.Module, x: torch.Tensor, bf16: bool, steps: int) -> tuple[float, float]:
    """Training and evaluation images/s of `model` on `x`, after two untimed steps each."""
    y = torch.randint(0, 10, (x.shape[0],))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def evaluate() -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(x)

    found = []
    for mode, run in ((True, train), (False, evaluate)):
        model.train(mode)
        run()
        run()
        start = time.perf_counter()
        for _ in range(steps):
            run()
        found.append(steps * x.shape[0] / (time.perf_counter() - start))
    return found[0], found[1]


def measure(name: str, precision: str, steps: int) -> dict[str, tuple[float, float]]:
    """{way: (train, eval) images/s} for one network at one precision."""
    model_name, options, batch, side = NETWORKS[name]
    x = torch.rand(batch, 1, side, side).contiguous(memory_format=torch.channels_last)
    ways: dict[str, Callable[[], AbstractContextManager[None]]] = {
        "resnets": nullcontext,
        "matmul path": matmul_path_in_fp32,
        "plain": nullcontext,
    }
    found = {}
    for way, context in ways.items():
        torch.manual_seed(0)
        model = create_model(model_name, in_channels=1, num_classes=10, **options)
        if way == "plain":
            plain_convs(model)
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        with context():
            found[way] = rates(model, x, precision == "bf16", steps)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per figure")
    parser.add_argument("--networks", nargs="*", choices=list(NETWORKS), default=list(NETWORKS))
    args = parser.parse_args()
    precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    print(f"# kernels {cpu_kernels()}, torch {torch.__version__}, {args.steps} timed steps")
    print("| network | precision | resnets train/eval | matmul path | plain nn.Conv2d | "
          "matmul / plain, train and eval |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for name in args.networks:
        for precision in precisions:
            found = measure(name, precision, args.steps)
            (mt, me), (pt, pe) = found["matmul path"], found["plain"]
            shown = {way: f"{t:.0f} / {e:.0f}" for way, (t, e) in found.items()}
            print(f"| {name} | {precision} | {shown['resnets']} | {shown['matmul path']} | "
                  f"{shown['plain']} | {mt / pt:.2f}x, {me / pe:.2f}x |")  # fmt: skip
    if "bf16" not in precisions:
        print("bf16: not timed, this CPU has no native bf16")


if __name__ == "__main__":
    main()
