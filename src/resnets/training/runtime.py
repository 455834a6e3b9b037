"""Where and how a run computes: device, numeric precision, memory format, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from resnets.errors import UsageError


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes, resolved from the settings and the hardware."""

    device: torch.device
    precision: str
    channels_last: bool

    @classmethod
    def resolve(cls, device: str, precision: str, channels_last: bool | None) -> Runtime:
        """`auto` choices made; fp16 on a CPU refused. On the CPU, malloc keeps freed memory."""
        dev = resolve_device(device)
        if dev.type == "cpu":
            keep_freed_host_memory()  # no page faults on each step's activations
        chosen = resolve_precision(precision, dev)
        if chosen == "fp16" and dev.type == "cpu":
            raise UsageError("fp16 autocast is for GPUs; on the CPU use --precision bf16 or fp32")
        return cls(dev, chosen, resolve_channels_last(channels_last, dev, chosen))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name} asked for, but this PyTorch sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {name} asked for, but only {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device mps asked for, but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


# The environment that runs ATen's, oneDNN's and MKL's AVX2 kernels on any x86 CPU: how an
# AVX-512 machine stands in for an AVX2-only one (MKL reads only its own variable; nothing
# caps onnxruntime, which picks its kernels itself).
AVX2_KERNELS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}  # fmt: skip

# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) under which it has no native bf16 kernel,
# and ATen's (ATEN_CPU_CAPABILITY): either set to these runs the AVX2 kernels on any CPU.
_NO_BF16_ISAS = {"sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni"}
_NO_BF16_CAPABILITIES = {"default", "avx2"}


@cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX, where oneDNN runs bf16 convolutions natively.

    Elsewhere bf16 is emulated and many times slower than fp32. The environment variables
    that cap the kernels (as used to run the AVX2 path on an AVX-512 machine) count too.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower() in _NO_BF16_ISAS:
        return False
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in _NO_BF16_CAPABILITIES:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return sys.platform == "darwin" and torch.backends.mps.is_available()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_kernels() -> str:
    """The instruction set ATen's CPU kernels run with here (AVX512, AVX2, ...), and bf16's way."""
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{torch.backends.cpu.get_cpu_capability()}, {bf16}"


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` means bf16 where the hardware computes it natively, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def resolve_channels_last(channels_last: bool | None, device: torch.device, precision: str) -> bool:
    """NHWC is faster for convolutions on CUDA, and on the CPU for oneDNN's bf16 and fp32
    kernels alike, on AVX-512 and AVX2 (BENCHMARKS.md, "Fast on every CPU": 1.1-1.25x in fp32
    training). `precision` is kept for callers; no precision changes the choice today."""
    if channels_last is not None:
        return channels_last
    return device.type in ("cuda", "cpu")


# glibc's mallopt parameters (malloc.h), and the values `return_freed_host_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_OWN_MAPPING = 2**20  # blocks of at least this many bytes each get their own mapping
_MAPPINGS = 65536  # glibc's default limit on such mappings
_TRIM = 128 * 2**10  # glibc's default: free memory beyond this at the heap's top goes back


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _mallopt(*settings: tuple[int, int]) -> bool:
    """Set glibc malloc's parameters; False off glibc or where one is refused."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return all(bool(libc.mallopt(parameter, value)) for parameter, value in settings)


def keep_freed_host_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of handing it back to the kernel.

    PyTorch's CPU tensors come from malloc, which serves each large one (an activation of
    tens of MB) with its own mmap and unmaps it when the tensor is freed. Every training step
    then faults the same memory back in page by page, and the kernel zeroes each page: on the
    2-core benchmark machine that was about 160,000 page faults and a tenth of the step's CPU
    time. Serving large blocks from the heap and never trimming it makes the second step on
    reuse the first one's pages. Intel's CPU tuning guide gets the same effect by preloading
    jemalloc or tcmalloc; this needs no change to how the process starts. The cost is that
    the process keeps its peak heap until it exits, which a training run does anyway.
    Returns whether the setting took (False off glibc).
    """
    return _mallopt((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def return_freed_host_memory() -> bool:
    """Undo `keep_freed_host_memory`: each block of 1 MiB or more gets its own mapping again
    and goes back to the kernel when freed.

    Kept memory makes a step's peak depend on the heap's layout, which changes with the address
    space's from run to run: one probe of the chapter's network at 224 px peaked 1.0 to 1.8
    GiB above what was in use, and 0.64 to 0.72 GiB, the same in every process, with its own
    mappings (BENCHMARKS.md, "The memory plan, a third time"). The steps pay for the page
    faults instead. The memory planner measures this way, and keeps freed memory again only
    where that fits with room to spare. Returns whether the setting took (False off glibc).
    """
    return _mallopt((_M_MMAP_MAX, _MAPPINGS), (_M_MMAP_THRESHOLD, _OWN_MAPPING),
                    (_M_TRIM_THRESHOLD, _TRIM))  # fmt: skip


def release_freed_host_memory() -> bool:
    """Hand memory that malloc holds free back to the kernel (glibc's malloc_trim).

    With `keep_freed_host_memory` the heap never shrinks, so the resident memory is the
    high-water mark of everything before; trimming first lets a measurement of a peak see
    what the measured work itself takes. Returns whether it could be done.
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)  # returns whether it freed anything
    return True


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """The device's peak allocation on CUDA; the process's peak resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for model initialisation, restoring it afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
