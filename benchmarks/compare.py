"""The plain way against `resnets`, side by side in one invocation on the same machine.

Runs benchmarks/reference.py and `resnets bench` (each in its own process, so peak memory is
each one's own), and prints every figure with the ratio. Then the physical bound: the best
GFLOP/s of a few dense probes (square matrix products and one 3x3 convolution) in float32,
and in bfloat16 only where this CPU computes it natively (elsewhere it is emulated, one 2048
matrix product taking about a minute, and no training would choose it), and the share of it
that the training step reaches, for the chapter's network and the `fast` recipe's.
Times vary on shared machines: compare ratios taken in the same run.

    python benchmarks/compare.py                      # d2l_resnet18, 96x96, batch 256
    python benchmarks/compare.py --steps 10 --json out.json
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/compare.py                  # an AVX2-only CPU's kernels
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from resnets.training.config import recipe_settings
from resnets.training.runtime import AVX2_KERNELS, cpu_has_native_bf16, cpu_kernels

HERE = Path(__file__).resolve().parent


def run_json(command: list[str]) -> dict[str, Any]:
    """The JSON object a benchmark process prints; exits with its error when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def gflops(run: Callable[[], object], flop: float, seconds: float) -> float:
    """GFLOP/s of `run` (which does `flop` FLOP), repeated for `seconds` after one warm-up."""
    run()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        runs += 1
    return runs * flop / (time.perf_counter() - start) / 1e9


def peak_probes(dtype: torch.dtype, seconds: float = 3.0) -> dict[str, float]:
    """GFLOP/s of dense work these cores do at their best, by probe.

    A square matrix product alone understates the peak on some CPUs (on a 2-core AMD EPYC one
    of 2048 ran below oneDNN's bf16 convolutions), so a 3x3 convolution of the chapter's
    layer1 shape, channels-last, is timed too; the bound is the best of them.
    """
    probes: dict[str, float] = {}
    for size in (2048, 4096):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        probes[f"matmul {size}"] = gflops(functools.partial(torch.mm, a, b), 2 * size**3, seconds)
    n, channels, side = 64, 64, 24
    x = torch.randn(n, channels, side, side, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, dtype=dtype).to(memory_format=torch.channels_last)
    flop = 2 * n * channels * channels * 9 * side * side
    probes["conv3x3 64ch 24px"] = gflops(lambda: F.conv2d(x, w, padding=1), flop, seconds)
    return probes


def train_gflop(figures: dict[str, Any]) -> float:
    """GFLOP of one training image: the forward pass, and twice that for the backward."""
    return 6 * figures["macs_per_image"] / 1e9


def fast_net_options(args: argparse.Namespace, recipe: dict[str, Any] | None = None) -> list[str]:
    """`resnets bench` options for the `fast` recipe's network, from the recipe itself: by
    default the settings a run on this CPU takes (its fp32 ones where bf16 is not native)."""
    recipe = recipe_settings("fast", "auto", "cpu") if recipe is None else recipe
    options = [f"--model={recipe['model']}", f"--width={recipe['width']}",
               f"--image-size={recipe['image_size']}", f"--batch-size={args.batch_size}",
               f"--steps={args.steps}", f"--warmup={args.warmup}",
               f"--stem-stride={recipe.get('stem_stride', 1)}"]  # fmt: skip
    if recipe.get("small_input"):
        options.append("--small-input")
    if recipe.get("stem_pool"):
        options.append("--stem-pool")
    if recipe.get("channels_last") is not None:
        options.append("--channels-last" if recipe["channels_last"] else "--no-channels-last")
    if args.data_dir:
        options += ["--data-dir", args.data_dir]
    return options


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--workers", type=int, default=4, help="reference DataLoader workers")
    parser.add_argument("--peak-seconds", type=float, default=3.0, help="time for each peak probe")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST files")
    parser.add_argument("--json", metavar="FILE", help="also write all figures to FILE")
    args = parser.parse_args()

    common = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("steps", "warmup", "batch_size", "image_size")
    ]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    reference = run_json(
        [sys.executable, str(HERE / "reference.py"), "--workers", str(args.workers), *common]
    )
    ours = run_json([sys.executable, "-m", "resnets.cli", "bench", "--json", *common])
    fast = run_json([sys.executable, "-m", "resnets.cli", "bench", "--json", "--no-onnx",
                     *fast_net_options(args)])  # fmt: skip
    dtypes = {"fp32": torch.float32}
    if cpu_has_native_bf16():
        dtypes["bf16"] = torch.bfloat16
    probes = {name: peak_probes(dtype, seconds=args.peak_seconds) for name, dtype in dtypes.items()}
    peaks = {name: max(found.values()) for name, found in probes.items()}
    gflop = train_gflop(ours)

    print(
        f"# {date.today()}, {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"kernels {cpu_kernels()}"
    )
    print(
        f"# d2l_resnet18 at {args.image_size}px, batch {args.batch_size}, {args.steps} timed "
        f"steps; reference: DataLoader({args.workers} workers) + PIL resize, fp32 NCHW; resnets: "
        f"{ours['precision']} {'channels-last' if ours['channels_last'] else 'NCHW'}, "
        f"device-resident batches ({ours['data']} data)"
    )
    rows = [
        ("train images/s", reference["train_images_per_sec"], ours["train_images_per_sec"]),
        ("eval images/s", reference["eval_images_per_sec"], ours["eval_images_per_sec"]),
        ("eval, BN folded", reference["eval_images_per_sec"], ours["eval_folded_images_per_sec"]),
        ("peak memory (MiB)", reference["peak_memory_bytes"] / 2**20,
         ours["peak_memory_bytes"] / 2**20),
        ("train GFLOP/s", reference["train_images_per_sec"] * gflop,
         ours["train_images_per_sec"] * gflop),
    ]  # fmt: skip
    capped = any(os.environ.get(name) for name in AVX2_KERNELS)
    if ours.get("eval_onnx_images_per_sec"):  # onnxruntime, float32, on the same batches
        rows.insert(
            2, ("eval, onnxruntime" + (" *" if capped else ""), reference["eval_images_per_sec"],
                ours["eval_onnx_images_per_sec"]),
        )  # fmt: skip
    print(f"| {'':18} | {'reference':>10} | {'resnets':>10} | {'ratio':>6} |")
    print(f"|{'-' * 20}|{'-' * 11}:|{'-' * 11}:|{'-' * 6}:|")
    for name, ref, new in rows:
        print(f"| {name:18} | {ref:10.1f} | {new:10.1f} | {new / ref:5.2f}x |")
    if capped and ours.get("eval_onnx_images_per_sec"):
        print("* onnxruntime chooses its own kernels: the caps above do not reach it")
    if capped and not os.environ.get("MKL_ENABLE_INSTRUCTIONS"):
        print("note: MKL_ENABLE_INSTRUCTIONS is not set, so matrix products run MKL's best kernels")
    for name, found in probes.items():
        shown = ", ".join(f"{probe} {rate:.0f}" for probe, rate in found.items())
        print(f"peak {name}: {peaks[name]:.0f} GFLOP/s, the best of {shown}")
    if "bf16" not in probes:
        print("peak bf16: not probed, this CPU has no native bf16 (it would be emulated)")
    print(f"| {'training step of':34} | {'GFLOP/img':>9} | {'images/s':>8} | {'GFLOP/s':>7} | "
          f"{'of peak':>7} |")  # fmt: skip
    print(f"|{'-' * 36}|{'-' * 10}:|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|")
    for name, figures in ((f"d2l_resnet18 at {args.image_size}px", ours),
                          (f"fast recipe's net at {fast['image_size']}px", fast)):  # fmt: skip
        per_image, rate = train_gflop(figures), figures["train_images_per_sec"]
        achieved = figures["train_gflops_per_sec"]  # rate * per_image, as `resnets bench` counts
        peak = peaks.get("bf16" if figures["precision"] == "bf16" else "fp32")
        share = f"{100 * achieved / peak:6.0f}%" if peak else "    n/a"
        print(
            f"| {name + ' (' + figures['precision'] + ')':34} | {per_image:9.3f} | {rate:8.0f} | "
            f"{achieved:7.0f} | {share} |"
        )
    print(
        f"reference workers' peak memory: {reference['peak_worker_memory_bytes'] / 2**20:.0f} MiB "
        "each (not included above)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "reference": reference,
                    "resnets": ours,
                    "fast_recipe_net": fast,
                    "peak_gflops": peaks,
                    "peak_probes_gflops": probes,
                    "cpu_kernels": cpu_kernels(),
                },
                indent=2,
            )  # fmt: skip
        )


if __name__ == "__main__":
    main()
