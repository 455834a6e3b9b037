"""The run folder: settings, metrics, curves, checkpoints and the summary of one training run.

A run folder holds `config.yaml` (every setting, resolved, and the data spec), `metrics.csv`,
`curves.png`, `checkpoints/last.pt`, `checkpoints/best.pt` and `summary.json`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from resnets.errors import UsageError
from resnets.files import atomic_file, write_atomic
from resnets.training.checkpoint import save_checkpoint
from resnets.training.plots import plot_curves

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
           "images_per_sec", "seconds", "lr")  # fmt: skip


def default_run_dir(model: str) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{model}"


class RunFolder:
    """Writes one run's files; never starts a new run over an old one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def start(self, settings: dict[str, Any], *, fresh: bool) -> None:
        """Create the folder and write `config.yaml`; a fresh run refuses a folder with a run."""
        if fresh and self.last.exists():
            raise UsageError(
                f"{self.path} already holds a run; continue it with --resume {self.path} "
                "or choose another --out"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / "config.yaml", yaml.safe_dump(settings, sort_keys=False))

    def save(self, name: str, state: dict[str, Any]) -> Path:
        return save_checkpoint(state, self.path / "checkpoints" / f"{name}.pt")

    def write_metrics(self, history: Sequence[dict[str, Any]], title: str) -> None:
        """`metrics.csv` (one row per epoch) and `curves.png`, each replaced whole, atomically."""
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(history)
        write_atomic(self.path / "metrics.csv", table.getvalue())
        with atomic_file(self.path / "curves.png") as file:
            plot_curves(history, file.name, title=title)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
