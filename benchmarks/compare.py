"""The plain way against `resnets`, side by side in one invocation on the same machine.

Runs benchmarks/reference.py and `resnets bench` (each in its own process, so peak memory is
each one's own), measures the machine's matrix-multiply peak in float32 and bfloat16 as the
physical bound, and prints every figure with the ratio. Times vary on shared machines: compare
ratios taken in the same run.

    python benchmarks/compare.py                      # d2l_resnet18, 96x96, batch 256
    python benchmarks/compare.py --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def run_json(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout)


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """GFLOP/s of a large square matrix product: what these cores can do at best."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return runs * 2 * size**3 / (time.perf_counter() - start) / 1e9


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
    parser.add_argument("--peak-seconds", type=float, default=3.0, help="matmul peak timing")
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
    peaks = {
        name: matmul_peak(dtype, seconds=args.peak_seconds)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    gflop = 6 * ours["macs_per_image"] / 1e9  # per training image: forward + 2x for backward

    print(f"# {date.today()}, {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
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
    if ours.get("eval_onnx_images_per_sec"):  # onnxruntime, float32, on the same batches
        rows.insert(
            2, ("eval, onnxruntime", reference["eval_images_per_sec"],
                ours["eval_onnx_images_per_sec"]),
        )  # fmt: skip
    print(f"| {'':18} | {'reference':>10} | {'resnets':>10} | {'ratio':>6} |")
    print(f"|{'-' * 20}|{'-' * 12}:|{'-' * 12}:|{'-' * 7}:|")
    for name, ref, new in rows:
        print(f"| {name:18} | {ref:10.1f} | {new:10.1f} | {new / ref:5.2f}x |")
    print(
        f"bound: one training image costs {gflop:.2f} GFLOP; measured matmul peak "
        f"{peaks['fp32']:.0f} GFLOP/s fp32, {peaks['bf16']:.0f} GFLOP/s bf16, i.e. at most "
        f"{peaks['fp32'] / gflop:.0f} (fp32) / {peaks['bf16'] / gflop:.0f} (bf16) training images/s"
    )
    print(
        f"reference workers' peak memory: {reference['peak_worker_memory_bytes'] / 2**20:.0f} MiB "
        "each (not included above)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"reference": reference, "resnets": ours, "matmul_peak_gflops": peaks}, indent=2
            )  # fmt: skip
        )


if __name__ == "__main__":
    main()
