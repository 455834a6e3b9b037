"""Planned against measured peak memory of whole training runs, repeated (BENCHMARKS.md).

Each run is `resnets train` in a fresh process, one epoch with evaluation and checkpoint
writes, in a child cgroup of this process's memory cgroup (v1 or v2) where one can be made, so
the kernel's own count (the cgroup's peak charge) is read beside the process's peak resident
memory. The plan's expected peak is read from its `note: memory:` line: the memory in use
when it planned plus what it expects a step (or an evaluation batch) to take beyond that.

    python benchmarks/plan_peaks.py --repeat 5 --isa native avx2 \\
        --data-dir /usr/share/datasets/fashion-mnist

`--limit 2.5GiB` runs under that cgroup limit instead of none and counts the runs the kernel
killed. Without --data-dir a synthetic set shaped like Fashion-MNIST is written (the memory
figures depend on the image size, not on what the images show).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from resnets.data import write_idx
from resnets.training.memory import _cgroup_mounts, format_bytes, parse_memory_budget
from resnets.training.runtime import AVX2_KERNELS

ISAS = {"native": {}, "avx2": AVX2_KERNELS}

# model, image size, precision, extra settings: the chapter's network at its size and at 224,
# torchvision layouts at small widths, a CIFAR network.
CASES = (
    ("d2l_resnet18", 224, "fp32", ()),
    ("d2l_resnet18", 224, "bf16", ()),
    ("d2l_resnet18", 96, "fp32", ()),
    ("d2l_resnet18", 96, "bf16", ()),
    ("resnet18", 96, "fp32", ("--width", "0.5")),
    ("resnet50", 64, "bf16", ("--width", "0.25")),
    ("cifar_resnet20", 32, "fp32", ()),
)

_RUNS = itertools.count()
_SIZE = r"([\d.]+ [KMGT]?i?B)"
_PLAN = re.compile(rf"expected to take {_SIZE} beyond the {_SIZE} in use, of {_SIZE} left")
_CHOICE = re.compile(r"note: memory: ([^;]*);")


@dataclass
class Row:
    """One case at one instruction set, over its repetitions."""

    model: str
    size: int
    precision: str
    isa: str
    planned: list[int] = field(default_factory=list)
    measured: list[int] = field(default_factory=list)
    charged: list[int] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # measured / planned, run by run
    choices: set[str] = field(default_factory=set)
    killed: int = 0
    runs: int = 0


def size_bytes(text: str) -> int:
    return parse_memory_budget(text.replace(" ", ""), of=1)


def write_synthetic(folder: Path, train: int, test: int) -> Path:
    """Fashion-MNIST's four IDX files with random images (written with --no-verify in mind)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for stem, n in (("train", train), ("t10k", test)):
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz",
                  torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz",
                  torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8))  # fmt: skip
    return folder


def _own_memory_cgroup() -> tuple[Path, str, str] | None:
    """(folder, limit file, peak file) of this process's memory cgroup, v1 or v2."""
    mounts = _cgroup_mounts()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and "memory" in mounts:
            return (mounts["memory"] / path.lstrip("/"), "memory.limit_in_bytes",
                    "memory.max_usage_in_bytes")  # fmt: skip
        if controllers == "" and "" in mounts:
            parent = mounts[""] / path.lstrip("/")
            with contextlib.suppress(OSError):
                if "memory" in (parent / "cgroup.subtree_control").read_text().split():
                    return parent, "memory.max", "memory.peak"
    return None


@contextlib.contextmanager
def child_cgroup(limit: int | None, name: str) -> Iterator[tuple[Path, str] | None]:
    """A new memory cgroup below this process's (limited to `limit` bytes, if given): yields
    (folder, peak file), or None where none can be made (then runs are not placed in one)."""
    own = _own_memory_cgroup()
    if own is None:
        yield None
        return
    folder, limit_file, peak_file = own
    group = folder / name
    try:
        group.mkdir()
        if limit is not None:
            (group / limit_file).write_text(str(limit))
            with contextlib.suppress(OSError):  # v1: never swap instead of failing
                (group / "memory.swappiness").write_text("0")
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    try:
        yield group, peak_file
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def run_once(argv: list[str], env: dict[str, str], group: tuple[Path, str] | None,
             out: Path) -> tuple[int, str, int | None, int | None]:
    """(exit code, stdout, the process's peak resident bytes, the cgroup's peak charge)."""

    def enter() -> None:
        if group is not None:
            (group[0] / "cgroup.procs").write_text(str(os.getpid()))

    done = subprocess.run([sys.executable, "-m", "resnets.cli", "train", *argv, "--out", str(out)],
                          capture_output=True, text=True, env=env, preexec_fn=enter,
                          timeout=3600)  # fmt: skip
    summary = out / "summary.json"
    measured = json.loads(summary.read_text())["peak_memory_bytes"] if summary.exists() else None
    charged = None
    if group is not None:
        with contextlib.suppress(OSError, ValueError):
            charged = int((group[0] / group[1]).read_text())
    if done.returncode not in (0, -9, 137):
        sys.stderr.write(done.stderr[-2000:])
    return done.returncode, done.stdout, measured, charged


def measure(row: Row, settings: list[str], env: dict[str, str], limit: int | None,
            work: Path) -> None:
    """Run `row`'s case once in a fresh cgroup and add what was seen to `row`."""
    name = f"plan-peaks-{os.getpid()}-{next(_RUNS)}"
    with child_cgroup(limit, name) as group:
        code, stdout, measured, charged = run_once(settings, env, group, work / name)
    row.runs += 1
    if code in (-9, 137):
        row.killed += 1
    plan = _PLAN.search(stdout)
    if plan is not None:
        row.planned.append(size_bytes(plan[1]) + size_bytes(plan[2]))
    choice = _CHOICE.search(stdout)
    if choice is not None:
        row.choices.add(re.sub(r" \(.*\)", "", choice[1]))
    if measured is not None:
        row.measured.append(measured)
        if plan is not None:
            row.ratios.append(measured / row.planned[-1])
    if charged is not None:
        row.charged.append(charged)


def _span(values: list[int]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return format_bytes(low) if low == high else f"{format_bytes(low)} - {format_bytes(high)}"


def table(rows: list[Row]) -> str:
    lines = [
        "| model | px | precision | ISA | runs | plan | planned | measured (resident) | "
        "measured / planned, at most | cgroup peak | killed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{max(r.ratios):.2f}" if r.ratios else "-"
        lines.append(
            f"| {r.model} | {r.size} | {r.precision} | {r.isa} | {r.runs} | "
            f"{'; '.join(sorted(r.choices)) or '-'} | {_span(r.planned)} | {_span(r.measured)} | "
            f"{ratio} | {_span(r.charged)} | {r.killed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (default 3)")
    parser.add_argument("--isa", nargs="+", choices=sorted(ISAS), default=["native"])
    parser.add_argument("--case", nargs="+", default=None,
                        help="only these cases, as MODEL:SIZE:PRECISION (default: all)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="Fashion-MNIST's IDX files (default: a synthetic set)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-samples", type=int, default=512)
    parser.add_argument("--test-samples", type=int, default=128)
    parser.add_argument("--limit", default="2.5GiB",
                        help="the runs' cgroup memory limit, or none (default 2.5GiB)")
    parser.add_argument("--extra", default="", help="more `resnets train` settings, quoted")
    args = parser.parse_args(argv)
    limit = None if args.limit == "none" else size_bytes(args.limit)
    cases = [c for c in CASES if args.case is None or f"{c[0]}:{c[1]}:{c[2]}" in args.case]
    if args.case is not None:  # a case named that is not in the table is run as named
        known = {f"{c[0]}:{c[1]}:{c[2]}" for c in cases}
        for name in args.case:
            if name not in known:
                model, px, precision = name.split(":")
                cases.append((model, int(px), precision, ()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="plan-peaks-") as temp:
        work = Path(temp)
        data = args.data_dir or write_synthetic(
            work / "data", args.train_samples, args.test_samples
        )
        for isa in args.isa:
            env = {**os.environ, **ISAS[isa]}
            for model, px, precision, extra in cases:
                row = Row(model, px, precision, isa)
                settings = [
                    "--model", model, "--image-size", str(px), "--precision", precision,
                    "--batch-size", str(args.batch_size), "--epochs", "1", "--device", "cpu",
                    "--train-samples", str(args.train_samples),
                    "--test-samples", str(args.test_samples),
                    "--data-dir", str(data), "--no-verify", *extra, *args.extra.split(),
                ]  # fmt: skip
                for _ in range(args.repeat):
                    measure(row, settings, env, limit, work)
                rows.append(row)
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
