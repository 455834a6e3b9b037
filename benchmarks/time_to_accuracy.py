"""Test accuracy against wall time, one curve per training run, from the runs' metrics.csv.

Each run folder's metrics.csv gives the test accuracy of every evaluated epoch and, in its
`elapsed` column, the wall seconds from the run's start (Python start-up, data loading and
checkpoints included) to the end of that evaluation. Files written before that column have
only each epoch's own `seconds`; their curve uses the sum of those and its label says so.

    python benchmarks/time_to_accuracy.py fast=runs/fast-s0 quick=runs/quick-s0 \\
        d2l=runs/d2l --target 0.93 --target 0.94 --budget 150 --budget 300

Writes docs/time-to-accuracy.png (or --out) and prints, per run, its final accuracy, its wall
time and when it first reached each target.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from resnets.training.plots import save_png  # its import selects the Agg backend

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "time-to-accuracy.png"


class RunError(Exception):
    """A run folder the script cannot draw; the message is one line naming it."""


@dataclass
class Curve:
    """One run's test accuracy (0-1) at each evaluated epoch's wall time (seconds)."""

    label: str
    seconds: list[float]
    accuracy: list[float]
    epoch_time_only: bool  # an older metrics.csv: the epochs' own seconds, start-up left out

    def first_reaching(self, target: float) -> float | None:
        """Wall seconds when the test accuracy first reached `target`, None if it never did."""
        pairs = zip(self.seconds, self.accuracy, strict=True)
        return next((s for s, a in pairs if a >= target), None)


def read_curve(folder: Path, label: str) -> Curve:
    """The curve of the run in `folder`; RunError when it has no usable metrics.csv."""
    metrics = folder / "metrics.csv"
    if not folder.is_dir():
        raise RunError(f"{folder}: no such run folder")
    if not metrics.is_file():
        raise RunError(
            f"{folder}: no metrics.csv (not a resnets run folder, or stopped before its first "
            "epoch)"
        )
    try:
        with open(metrics, newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RunError(f"{metrics}: unreadable ({error})") from error
    columns = set(rows[0]) if rows else set()
    if not {"test_acc", "seconds"} <= columns:
        raise RunError(f"{metrics}: no test_acc and seconds columns; not a resnets metrics file")
    with_elapsed = "elapsed" in columns and all(row["elapsed"] for row in rows)
    seconds, accuracy, total = [], [], 0.0
    try:
        for row in rows:
            total += float(row["seconds"])
            if row["test_acc"]:  # epochs that were not evaluated have it empty
                seconds.append(float(row["elapsed"]) if with_elapsed else total)
                accuracy.append(float(row["test_acc"]))
    except ValueError as error:
        raise RunError(f"{metrics}: a value that is not a number ({error})") from error
    if not accuracy:
        raise RunError(f"{metrics}: no evaluated epoch (every test_acc is empty)")
    return Curve(label, seconds, accuracy, epoch_time_only=not with_elapsed)


def parse_run(argument: str) -> tuple[str, Path]:
    """`LABEL=FOLDER`, or `FOLDER` (labelled with its name)."""
    label, sep, folder = argument.partition("=")
    if not sep:
        return Path(argument).name, Path(argument)
    return label, Path(folder)


def plot(
    curves: list[Curve], out: Path, targets: list[float], budgets: list[float], title: str
) -> None:
    """Draw the curves (accuracy in %, against wall seconds) into the PNG file `out`."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        label = curve.label + (" (epoch time only)" if curve.epoch_time_only else "")
        axes.plot(curve.seconds, [100 * a for a in curve.accuracy], marker="o", ms=3, label=label)
    for target in targets:
        axes.axhline(100 * target, color="grey", linestyle="--", linewidth=0.8)
    for budget in budgets:
        axes.axvline(budget, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel("wall time (s)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    save_png(figure, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]FOLDER", help="run folders")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"PNG ({DEFAULT_OUT.name})")
    parser.add_argument("--target", type=float, action="append", default=[],
                        help="an accuracy (0-1) to mark, e.g. 0.94; repeatable")  # fmt: skip
    parser.add_argument("--budget", type=float, action="append", default=[],
                        help="a wall time (s) to mark, e.g. 300; repeatable")  # fmt: skip
    parser.add_argument("--title", default="Test accuracy against wall time")
    args = parser.parse_args(argv)
    try:
        curves = [read_curve(folder, label) for label, folder in map(parse_run, args.runs)]
    except RunError as error:
        print(f"time_to_accuracy.py: error: {error}", file=sys.stderr)
        return 2
    plot(curves, args.out, args.target, args.budget, args.title)
    for curve in curves:
        reached = "".join(
            f", {100 * t:g}% at "
            + (f"{s:.0f} s" if (s := curve.first_reaching(t)) is not None else "never")
            for t in args.target
        )
        print(
            f"{curve.label}: final {100 * curve.accuracy[-1]:.2f}% at {curve.seconds[-1]:.0f} s, "
            f"best {100 * max(curve.accuracy):.2f}%{reached}"
            + (" (epoch time only)" if curve.epoch_time_only else "")
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
