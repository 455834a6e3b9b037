"""The run folder: settings, metrics, curves, checkpoints and the summary of one training run.

A run folder holds `config.yaml` (every setting, resolved, and the data spec), `metrics.csv`,
`curves.png`, `checkpoints/last.pt`, `checkpoints/best.pt`, `summary.json` and, after
`resnets eval`, `confusion.png`.

Every file is written whole or not at all (`resnets.files.atomic_file`); a write that fails
because the disk is full or the folder read-only becomes one DiskError (`RunFolder._writing`)
that says what is needed, what is free, what was kept and what to do.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from resnets.errors import DiskError, UsageError
from resnets.files import DISK_ERRNOS, free_bytes, write_atomic
from resnets.training.checkpoint import checkpoint_bytes, save_checkpoint
from resnets.training.plots import (
    plot_confusion,
    plot_curves,
    plot_predictions,
    plot_reliability,
)

PLOT_EVERY = 30.0  # seconds between redrawings of curves.png for epochs that were not evaluated

# `seconds`: the epoch's training and evaluation. `elapsed`: wall seconds from the start of
# the run to the end of the epoch's evaluation, start-up, data loading and earlier epochs'
# checkpoints included, added up over resumed processes (older metrics.csv files lack it).
# `test_ece`: the test split's expected calibration error (see calibration.py; older files
# lack it).
METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
           "images_per_sec", "seconds", "lr", "elapsed", "test_ece")  # fmt: skip


def default_run_dir(model: str) -> Path:
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{model}"


class RunFolder:
    """Writes one run's files; never starts a new run over an old one or over a user's files.

    `elsewhere` is the way out that a DiskError proposes besides freeing space. With
    `writes=False` (every process of a data-parallel run but the first) it checks and writes
    nothing: one process owns the folder.
    """

    def __init__(
        self, path: str | Path, *, elsewhere: str = "choose another --out", writes: bool = True
    ) -> None:
        self.path = Path(path)
        self.elsewhere = elsewhere
        self.writes = writes
        self.last_position: dict[str, Any] | None = None  # where last.pt stands, when known
        self._plotted_at: float | None = None  # time.monotonic() of the last curves.png

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    # ---- starting --------------------------------------------------------------------------

    def start(
        self, settings: dict[str, Any], *, fresh: bool, position: dict[str, Any] | None = None
    ) -> list[str]:
        """Create the folder and write `config.yaml`; return notes for the person running it.

        A fresh run refuses a file, a folder holding a run, and a folder holding anything but
        what a run that died before its first checkpoint leaves (our config.yaml, temporary
        files). Resuming (`position`: where last.pt stands) refuses to overwrite a config.yaml
        or metrics.csv that resnets did not write. Temporary files of a killed process are
        removed either way.
        """
        self.last_position = None if fresh else position
        if not self.writes:
            return []
        payload = yaml.safe_dump(settings, sort_keys=False)
        with self._writing(self.path / "config.yaml", len(payload.encode())):
            notes = self.check(fresh=fresh)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as error:
                raise UsageError(
                    f"cannot create the run folder {self.path}: a part of the path is a file; "
                    "choose another --out"
                ) from error
            removed = self._remove_temporary_files()
            write_atomic(self.path / "config.yaml", payload)
        if removed:
            notes.append(
                f"removed {removed} temporary file{'s' if removed > 1 else ''} left in "
                f"{self.path} by a process that was stopped while writing"
            )
        return notes

    def check(self, *, fresh: bool) -> list[str]:
        """Refuse a folder this run must not write into (see `start`), writing nothing; called
        early too, so a bad --out is said before any data is read."""
        if not self.writes:
            return []
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file, not a folder; choose another --out")
        notes = self._check_fresh() if fresh else []
        self._refuse_foreign_files()
        return notes

    def _check_fresh(self) -> list[str]:
        if not self.path.exists():
            return []
        if self.last.exists():
            raise UsageError(
                f"{self.path} already holds a run; continue it with --resume {self.path} "
                "or choose another --out"
            )
        left = [p for p in self.path.iterdir() if not _is_temporary(p)]
        checkpoints = self.path / "checkpoints"
        if checkpoints.is_dir() and all(_is_temporary(p) for p in checkpoints.iterdir()):
            left.remove(checkpoints)
        if not left:
            return []
        config = self.path / "config.yaml"
        if left == [config] and is_our_config(config):
            return [
                f"{self.path} holds only the settings of a run that stopped before its first "
                "checkpoint; starting a new run in it"
            ]
        if is_our_config(config):
            raise UsageError(
                f"{self.path} holds part of a run but no checkpoints/last.pt to resume from; "
                "choose another --out (nothing there was changed)"
            )
        raise UsageError(
            f"--out {self.path} is a folder that is not empty and holds no resnets run; "
            "choose a new or empty --out (nothing there was changed)"
        )

    def _refuse_foreign_files(self) -> None:
        """Resuming in a folder must not overwrite a user's own config.yaml or metrics.csv."""
        config, metrics = self.path / "config.yaml", self.path / "metrics.csv"
        foreign = [config] if config.exists() and not is_our_config(config) else []
        if metrics.exists() and not is_our_metrics(metrics):
            foreign.append(metrics)
        if foreign:
            raise UsageError(
                f"{' and '.join(map(str, foreign))} {'were' if len(foreign) > 1 else 'was'} not "
                "written by resnets and would be overwritten; move the checkpoint into a run "
                "folder of its own or choose another --out"
            )

    def _remove_temporary_files(self) -> int:
        """Delete `.*.tmp` files (named so by atomic_file) in the folder and checkpoints/."""
        removed = 0
        for folder in (self.path, self.path / "checkpoints"):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    # ---- writing -----------------------------------------------------------------------------

    def kept(self) -> str:
        """What survives a failure now: the last good checkpoint, or that there is none."""
        if not self.last.is_file():
            return "no checkpoint yet"
        position, where = self.last_position, ""
        if position:
            epoch, batch = position.get("epoch", 0), position.get("batch", 0)
            where = f" (epoch {epoch})" if not batch else f" (epoch {epoch + 1}, batch {batch})"
        return f"the last good checkpoint is {self.last}{where}"

    @contextlib.contextmanager
    def _writing(self, path: Path, needed: int) -> Iterator[None]:
        """The one place where a write that fails for want of space or permission becomes a
        DiskError naming the folder, the bytes needed and free, what was kept, and the fix."""
        try:
            yield
        except OSError as error:
            if error.errno not in DISK_ERRNOS:
                raise
            folder = path.parent
            reason = (error.strerror or os.strerror(error.errno or 0)).lower()
            free = free_bytes(folder)
            room = "free space unknown" if free is None else f"{free:,} bytes free"
            fix = (
                f"free some space there or {self.elsewhere}"
                if error.errno in (errno.ENOSPC, errno.EDQUOT)
                else f"make {folder} writable or {self.elsewhere}"
            )
            raise DiskError(
                f"cannot write {path.name} in {folder}: {reason} (needs about {needed:,} bytes, "
                f"{room} there); {self.kept()}; {fix}"
            ) from error

    def _write(self, name: str, payload: bytes | str) -> Path:
        data = payload.encode() if isinstance(payload, str) else payload
        with self._writing(self.path / name, len(data)):
            return write_atomic(self.path / name, data)

    def save(self, name: str, state: dict[str, Any]) -> Path:
        path = self.path / "checkpoints" / f"{name}.pt"
        if not self.writes:
            return path
        with self._writing(path, checkpoint_bytes(state)):
            save_checkpoint(state, path)
        if name == "last":
            self.last_position = dict(state.get("position") or {})
        return path

    def write_metrics(self, history: Sequence[dict[str, Any]], title: str) -> None:
        """`metrics.csv` (one row per epoch) and `curves.png`, each replaced whole, atomically.

        The plot (about a second of matplotlib) is redrawn after an evaluated epoch, or when
        PLOT_EVERY seconds have passed: a small data set stretched to a recipe's steps runs
        many short epochs, and drawing after each one would cost more than training them."""
        if not self.writes:
            return
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(history)
        self._write("metrics.csv", table.getvalue())
        now = time.monotonic()
        evaluated = bool(history) and history[-1].get("test_acc") is not None
        if not evaluated and self._plotted_at is not None and now - self._plotted_at < PLOT_EVERY:
            return
        self._plotted_at = now
        picture = io.BytesIO()
        plot_curves(history, picture, title=title)
        self._write("curves.png", picture.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        if not self.writes:
            return
        self._write("summary.json", json.dumps(summary, indent=2) + "\n")

    def write_confusion(
        self, matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str
    ) -> Path:
        """`confusion.png`, written by `resnets eval`."""
        picture = io.BytesIO()
        plot_confusion(matrix, classes, picture, title)
        return self._write("confusion.png", picture.getvalue())

    def write_calibration(self, bins: Sequence[dict[str, Any]], ece: float, title: str) -> Path:
        """`calibration.png`, written by `resnets eval`: the reliability diagram."""
        picture = io.BytesIO()
        plot_reliability(bins, ece, picture, title)
        return self._write("calibration.png", picture.getvalue())

    def write_predictions(
        self,
        images: Any,
        true: Sequence[int],
        predicted: Sequence[int],
        confidence: Sequence[float],
        classes: Sequence[str],
        title: str,
    ) -> Path:
        """`predictions.png`, written by `resnets eval`: test images (uint8, N x C x H x W)
        titled with their predicted class, mistakes in red (see plots.plot_predictions)."""
        picture = io.BytesIO()
        plot_predictions(images, true, predicted, confidence, classes, picture, title)
        return self._write("predictions.png", picture.getvalue())


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def is_our_config(path: Path) -> bool:
    """Whether `path` is a config.yaml that resnets wrote: its settings hold the data spec."""
    try:
        settings = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(settings, dict) and "data_spec" in settings and "model" in settings


def is_our_metrics(path: Path) -> bool:
    """Whether `path` is a metrics.csv that resnets wrote: its header is ours (or an older
    version of ours, which had fewer columns)."""
    try:
        with open(path, newline="") as file:
            header = next(csv.reader(file), None) or []
            return header[:1] == ["epoch"] and {"train_loss", "test_acc"} <= set(header)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
