"""Out of memory is never fatal: split the batch into micro-batches and accumulate gradients."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

import torch

from resnets.errors import ResnetsError

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
    once per halving with a sentence for the user.
    """

    def __init__(self, size: int | None = None, announce: Callable[[str], None] = print) -> None:
        self.size = size
        self.announce = announce

    def run(self, batch: int, work: Callable[[int], T], what: str = "batch") -> T:
        """Call `work(chunk)` with chunk = min(size, batch), retrying smaller on out-of-memory."""
        while True:
            chunk = min(self.size or batch, batch)
            try:
                return work(chunk)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if chunk == 1:
                    raise ResnetsError(
                        f"out of memory even with a {what} of one image; "
                        "use a smaller model or --image-size, or another device"
                    ) from error
            release_memory()
            self.size = chunk // 2
            self.announce(
                f"out of memory with {what}es of {chunk}; continuing with {self.size} "
                f"per {what}"
                + (", accumulating gradients over each batch" if what == "micro-batch" else "")
            )
