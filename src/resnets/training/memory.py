"""Out of memory is never fatal: split the batch into micro-batches and accumulate gradients."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from resnets.errors import ResnetsError, UsageError

T = TypeVar("T")

_OOM_MESSAGES = (
    "out of memory",  # CUDA, and "MPS backend out of memory"
    "can't allocate memory",  # the CPU allocator when the host runs out
    "not enough memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA, MPS and host allocation failures, however PyTorch reports them."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MESSAGES)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


class MemoryFallback:
    """Runs work on chunks of a batch, halving the chunk whenever memory runs out.

    `size` is the largest chunk known to fit (None: the whole batch, until proven otherwise).
    The halving is remembered, so later batches start at a size that fits; `announce` is called
    once per halving with a sentence for the user. No chunk is made smaller than `least`: a
    training pass needs 2 images where BatchNorm's last map is 1x1 (see `split_sizes`).
    """

    def __init__(
        self, size: int | None = None, announce: Callable[[str], None] = print, least: int = 1
    ) -> None:
        self.size = size
        self.announce = announce
        self.least = least

    def run(self, batch: int, work: Callable[[int], T], what: str = "batch") -> T:
        """Call `work(chunk)` with chunk = min(size, batch), retrying smaller on out-of-memory."""
        while True:
            chunk = min(self.size or batch, batch)
            try:
                return work(chunk)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if chunk <= self.least:
                    images = "one image" if chunk == 1 else f"{chunk} images, the fewest "
                    images += "" if chunk == 1 else "BatchNorm trains on at this size"
                    raise ResnetsError(
                        f"out of memory even with a {what} of {images}; "
                        "use a smaller model or --image-size, or another device"
                    ) from error
            release_memory()
            self.size = max(self.least, chunk // 2)
            self.announce(
                f"out of memory with {what}es of {chunk}; continuing with {self.size} "
                f"per {what}"
                + (", accumulating gradients over each batch" if what == "micro-batch" else "")
            )


def split_sizes(total: int, chunk: int, least: int = 1) -> list[int]:
    """Sizes of the pieces of a batch of `total` in chunks of `chunk`, none under `least`
    unless the batch itself is: a last piece that would be smaller is evened out with the
    one before it (two pieces of the same total), or joined to it when `chunk` is `least`."""
    sizes = [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])
    if len(sizes) > 1 and sizes[-1] < least:
        joined = sizes.pop() + sizes.pop()
        halves = [joined - joined // 2, joined // 2]
        sizes += halves if halves[1] >= least else [joined]
    return sizes


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}  # fmt: skip


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def proc_bytes(path: str, field: str) -> int | None:
    """A "Field:   N kB" line of a Linux /proc file (meminfo, self/status) in bytes, or None."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_available_memory() -> int:
    """The machine's available memory (MemAvailable: free plus reclaimable cache)."""
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


@dataclass(frozen=True)
class CgroupLimit:
    """A cgroup memory limit and how much of it is taken (page cache that can be reclaimed
    does not count as taken)."""

    limit: int
    usage: int
    reclaimable: int

    @property
    def headroom(self) -> int:
        return max(0, self.limit - max(0, self.usage - self.reclaimable))


def _cgroup_mounts() -> dict[str, Path]:
    """Mount points of the cgroup v2 hierarchy ("") and the v1 memory controller ("memory")."""
    mounts: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        fields = line.split()
        if " - " not in line:
            continue
        kind, _, options = line.split(" - ", 1)[1].split()[:3]
        if kind == "cgroup2":
            mounts.setdefault("", Path(fields[4]))
        elif kind == "cgroup" and "memory" in options.split(","):
            mounts.setdefault("memory", Path(fields[4]))
    return mounts


def _cgroup_folders() -> list[Path]:
    """This process's memory cgroup folders and their ancestors, innermost first."""
    mounts = _cgroup_mounts()
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        key = "" if controllers == "" else "memory" if "memory" in controllers.split(",") else None
        if key is None or key not in mounts:
            continue
        folder = mounts[key] / path.lstrip("/")
        while True:
            folders.append(folder)
            if folder == mounts[key]:
                break
            folder = folder.parent
    return folders


def _reclaimable(folder: Path) -> int:
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, value = line.split()
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


# (limit, usage) file names: cgroup v2, then v1.
LIMIT_FILES = (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes"))


def cgroup_limit() -> CgroupLimit | None:
    """The tightest cgroup memory limit on this process (v2 memory.max, v1
    memory.limit_in_bytes, here or in an ancestor), or None where there is none."""
    tightest = None
    for folder in _cgroup_folders():
        for limit_file, usage_file in LIMIT_FILES:
            limit, usage = _read_int(folder / limit_file), _read_int(folder / usage_file)
            if limit is None or usage is None or limit >= 2**60:
                continue
            found = CgroupLimit(limit, usage, _reclaimable(folder))
            if tightest is None or found.headroom < tightest.headroom:
                tightest = found
    return tightest


def format_bytes(count: float) -> str:
    """1536 -> "1.5 KiB": binary units, three significant figures."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} TiB"


def parse_memory_budget(text: str, of: int) -> int:
    """Bytes from "6GiB", "500MB", "1e9", or "80%" (of `of`)."""
    raw = text.strip().lower().replace(" ", "")
    try:
        if raw.endswith("%"):
            share = float(raw[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return int(share / 100 * of)
        number = raw.rstrip("kmgtib")
        unit = raw[len(number) :]
        value = float(number) * _UNITS[unit]
        if not math.isfinite(value) or value <= 0:
            raise ValueError
        return int(value)
    except (ValueError, KeyError):
        raise UsageError(
            f"memory budget {text!r} is not a size; write e.g. 6GiB, 500MB or 80%"
        ) from None
