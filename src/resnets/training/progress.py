"""Progress as lines of text, for output that is not a terminal (a log file, nohup, CI).

A progress bar redraws one line in place; written to a file it is either dropped (tqdm turns
itself off there) or piles up as carriage returns. So where standard output is not a terminal
the trainer prints a plain line every N steps or every so many seconds instead, as Lightning
and timm do in their logs: `epoch 1/6, batch 120/235 (51%), loss 0.8123, 412 images/s, about
14 s left in the epoch`.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from resnets.errors import UsageError

DEFAULT_LOG_EVERY = "30s"


@dataclass(frozen=True)
class LogEvery:
    """How often a progress line is due: every `steps` optimizer steps, or every `seconds`
    (one of them; neither: never)."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> LogEvery:
        """"50" (steps), "30s" (seconds) or "0" (never)."""
        written = text.strip().lower()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s?)", written)
        if match is None:
            raise UsageError(
                f"--log-every takes a number of steps (50), of seconds (30s) or 0 for never, "
                f"not {text!r}"
            )
        number, seconds = float(match[1]), bool(match[2])
        if number == 0:
            return cls()
        if seconds:
            return cls(seconds=number)
        if number != int(number):
            raise UsageError(f"--log-every {text}: a number of steps is a whole number")
        return cls(steps=int(number))

    @property
    def never(self) -> bool:
        return self.steps is None and self.seconds is None


def output_is_terminal() -> bool:
    """Whether standard output is a terminal (where the progress bar is enough)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


class ProgressLines:
    """The progress lines of one epoch: after each optimizer step, `step(batch, images)` says
    whether a line is due, and `write(batch, loss)` then writes it through `log` (the loss is
    read only then: it costs a device sync)."""

    def __init__(
        self,
        every: LogEvery,
        log: Callable[[str], None],
        desc: str,
        total: int,
        first: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every, self.log, self.desc, self.total = every, log, desc, total
        self.clock = clock
        self.start = self.last = clock()
        self.first = self.last_batch = first  # the epoch's batch this process began at
        self.images = 0

    def due(self, batch: int) -> bool:
        """Whether a line is due after `batch` batches of the epoch (never after its last)."""
        if batch >= self.total or self.every.never:
            return False
        if self.every.steps is not None:
            return batch % self.every.steps == 0
        return self.every.seconds is not None and self.clock() - self.last >= self.every.seconds

    def step(self, batch: int, images: int) -> bool:
        """Count a step of `images` images that ended batch `batch`; whether a line is due."""
        self.images += images
        return self.due(batch)

    def write(self, batch: int, loss: float) -> None:
        """The line after `batch` batches, with `loss`, the mean training loss so far."""
        now = self.clock()
        seconds = max(now - self.start, 1e-9)
        rate = self.images / seconds
        done = batch - self.first
        left = (self.total - batch) * seconds / done if done else math.nan
        self.log(
            f"{self.desc}, batch {batch}/{self.total} ({100 * batch / self.total:.0f}%), "
            f"loss {loss:.4f}, {rate:.0f} images/s, about {left:.0f} s left in the epoch"
        )
        self.last, self.last_batch = now, batch
