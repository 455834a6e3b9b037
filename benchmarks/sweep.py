"""How cost grows across the zoo: resnets against the plain PyTorch way, model by model.

For each (model, input size) it runs, each in its own process so that peak memory is each
one's own, benchmarks/reference.py (float32, NCHW, eager, a DataLoader that resizes with PIL,
as the chapter does) and `resnets bench` (the project's data path and precision, evaluation
also with BatchNorm folded), on the CPU, a few steps each. It adds the FLOPs per image
(resnets.summary's MACs, counted with torch.utils.flop_counter) and the GFLOP/s achieved,
prints a table with the ratios, and writes every figure to a CSV and a JSON file and one plot
of images/s against GFLOPs per image.

    python benchmarks/sweep.py                         # the eight configurations below
    python benchmarks/sweep.py --only resnet50@224 --steps 5
    python benchmarks/sweep.py --quick                 # cifar_resnet20, 1 step: does it run

Times vary on shared machines: compare ratios taken in the same run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from resnets.files import write_atomic
from resnets.training.plots import save_png  # its import selects the Agg backend

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
if str(HERE) not in sys.path:  # imported by path (the tests): compare.py sits beside it
    sys.path.insert(0, str(HERE))
from compare import cpu_name, run_json  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One point of the sweep: a model at an input size, with its batch and data set."""

    model: str
    image_size: int
    batch_size: int
    dataset: str

    @property
    def name(self) -> str:
        return f"{self.model}@{self.image_size}"


# Batches as large as fit comfortably in a few GiB of a small machine's memory.
CONFIGS = (
    Config("cifar_resnet20", 32, 256, "cifar10"),
    Config("cifar_resnet56", 32, 256, "cifar10"),
    Config("cifar_resnet110", 32, 256, "cifar10"),
    Config("d2l_resnet18", 28, 256, "fashion-mnist"),
    Config("d2l_resnet18", 56, 256, "fashion-mnist"),
    Config("d2l_resnet18", 96, 256, "fashion-mnist"),
    Config("resnet50", 96, 64, "fashion-mnist"),
    Config("resnet50", 224, 32, "fashion-mnist"),
)
QUICK = Config("cifar_resnet20", 32, 4, "cifar10")

COLUMNS = (
    "model", "image_size", "batch_size", "dataset", "implementation", "data", "precision",
    "layout", "gflop_per_image", "train_images_per_sec", "eval_images_per_sec",
    "eval_folded_images_per_sec", "train_gflops_per_sec", "eval_gflops_per_sec",
    "peak_memory_bytes",
)  # fmt: skip


def measure(config: Config, steps: int, warmup: int, workers: int) -> list[dict[str, Any]]:
    """Two rows for `config`: the reference's figures and ours, with FLOPs and GFLOP/s."""
    common = [
        f"--model={config.model}", f"--dataset={config.dataset}",
        f"--image-size={config.image_size}", f"--batch-size={config.batch_size}",
        f"--steps={steps}", f"--warmup={warmup}",
    ]  # fmt: skip
    reference = run_json(
        [sys.executable, str(HERE / "reference.py"), f"--workers={workers}", *common]
    )
    ours = run_json(
        [sys.executable, "-m", "resnets.cli", "bench", "--json", "--device=cpu", "--no-onnx",
         *common]
    )  # fmt: skip
    flop = 2 * ours["macs_per_image"]  # one forward pass; the same network on both sides
    rows = []
    for side, layout, folded in (
        (reference, "NCHW", None),
        (ours, "channels-last" if ours["channels_last"] else "NCHW",
         ours["eval_folded_images_per_sec"]),
    ):  # fmt: skip
        rows.append({
            "model": config.model, "image_size": config.image_size,
            "batch_size": config.batch_size, "dataset": config.dataset,
            "implementation": side.get("implementation", "resnets"), "data": side["data"],
            "precision": side["precision"], "layout": layout, "gflop_per_image": flop / 1e9,
            "train_images_per_sec": side["train_images_per_sec"],
            "eval_images_per_sec": side["eval_images_per_sec"],
            "eval_folded_images_per_sec": folded,
            # training: forward and a backward pass of about twice its cost
            "train_gflops_per_sec": side["train_images_per_sec"] * 3 * flop / 1e9,
            "eval_gflops_per_sec": (folded or side["eval_images_per_sec"]) * flop / 1e9,
            "peak_memory_bytes": side["peak_memory_bytes"],
        })  # fmt: skip
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per configuration, reference and resnets side by side, ratios."""
    lines = [
        "| model | px | GFLOP/img | train ref | train ours | x | eval ref | eval ours "
        "(folded) | x | GFLOP/s train ref/ours | peak MiB ref/ours |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for ref, ours in zip(rows[::2], rows[1::2], strict=True):
        eval_ours = ours["eval_folded_images_per_sec"]
        lines.append(
            f"| {ref['model']} | {ref['image_size']} | {ref['gflop_per_image']:.3f} "
            f"| {ref['train_images_per_sec']:.0f} | {ours['train_images_per_sec']:.0f} "
            f"| {ours['train_images_per_sec'] / ref['train_images_per_sec']:.2f} "
            f"| {ref['eval_images_per_sec']:.0f} "
            f"| {ours['eval_images_per_sec']:.0f} ({eval_ours:.0f}) "
            f"| {eval_ours / ref['eval_images_per_sec']:.2f} "
            f"| {ref['train_gflops_per_sec']:.0f} / {ours['train_gflops_per_sec']:.0f} "
            f"| {ref['peak_memory_bytes'] / 2**20:.0f} / {ours['peak_memory_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    """Images/s against GFLOPs per image (log-log), training and evaluation side by side."""
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for panel, (what, ours_key) in zip(
        panels, (("train", "train_images_per_sec"), ("eval", "eval_folded_images_per_sec")),
        strict=True,
    ):  # fmt: skip
        for implementation, marker, key in (
            ("reference", "o", f"{what}_images_per_sec"), ("resnets", "^", ours_key)
        ):  # fmt: skip
            chosen = [r for r in rows if r["implementation"] == implementation]
            panel.scatter([r["gflop_per_image"] for r in chosen], [r[key] for r in chosen],
                          marker=marker, label=implementation)  # fmt: skip
        for r in rows:
            if r["implementation"] == "resnets":
                panel.annotate(f"{r['model']}@{r['image_size']}",
                               (r["gflop_per_image"], r[ours_key]), fontsize=7,
                               xytext=(4, 2), textcoords="offset points")  # fmt: skip
        panel.set_xscale("log")
        panel.set_yscale("log")
        panel.set_xlabel("GFLOPs per image (forward)")
        panel.set_ylabel(f"{what} images/s")
        panel.set_title("training" if what == "train" else "evaluation (resnets: folded BN)")
        panel.grid(alpha=0.3, which="both")
        panel.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    save_png(figure, out)


def chosen_configs(only: list[str], quick: bool, batch_size: int | None) -> list[Config]:
    """The configurations to run: --quick's one, those named by --only, or all of them."""
    if quick:
        configs = [QUICK]
    elif only:
        known = {c.name: c for c in CONFIGS}
        unknown = [name for name in only if name not in known]
        if unknown:
            sys.exit(f"sweep.py: unknown --only {', '.join(unknown)}; choose from "
                     f"{', '.join(known)}")  # fmt: skip
        configs = [known[name] for name in only]
    else:
        configs = list(CONFIGS)
    if batch_size is not None:
        configs = [Config(c.model, c.image_size, batch_size, c.dataset) for c in configs]
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--batch-size", type=int, help="one batch size for every model")
    parser.add_argument("--workers", type=int, default=4, help="reference DataLoader workers")
    parser.add_argument("--only", action="append", default=[], metavar="MODEL@SIZE",
                        help="run this configuration only (repeatable), e.g. resnet50@224")
    parser.add_argument("--quick", action="store_true",
                        help="cifar_resnet20 at 32 px, batch 4, 1 step, no workers: a smoke "
                             "test, not a measurement")  # fmt: skip
    parser.add_argument("--csv", type=Path, default=DOCS / "sweep.csv")
    parser.add_argument("--json", type=Path, default=DOCS / "sweep.json")
    parser.add_argument("--plot", type=Path, default=DOCS / "sweep.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.workers = 1, 1, 0
    configs = chosen_configs(args.only, args.quick, args.batch_size)

    rows: list[dict[str, Any]] = []
    for config in configs:
        print(f"measuring {config.name}, batch {config.batch_size} ...", file=sys.stderr)
        rows += measure(config, args.steps, args.warmup, args.workers)
    machine = f"{date.today()}, {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    method = (
        f"{args.steps} timed steps after {args.warmup}; reference: DataLoader({args.workers} "
        "workers) + PIL resize, fp32 NCHW eager; resnets: `resnets bench --device cpu`"
    )
    header = f"{machine}\n{method}"
    print(f"# {machine}\n# {method}")
    print(table(rows))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    figures = {"machine": machine, "method": method, "rows": rows}
    for path, payload in (
        (args.csv, buffer.getvalue()),
        (args.json, json.dumps(figures, indent=2) + "\n"),
    ):
        write_atomic(path, payload)  # its folder made too
    plot(rows, args.plot, header)
    print(f"wrote {args.csv}, {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
