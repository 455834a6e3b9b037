"""Plan a run's memory before its first step, instead of waiting for the kernel to kill it.

On Linux a process that takes more memory than it may is rarely told so: the out-of-memory
killer ends it first (exit 137, nothing saved). So before training, the trainer finds its
budget (the container's cgroup limit, the machine's available memory, the GPU's free memory,
or `--memory-budget`), measures what a training step costs at two small micro-batch sizes
(peak resident memory on the CPU, peak allocation on CUDA), fits a fixed plus per-image cost,
and picks the largest micro-batch whose predicted peak stays under the budget with a margin.
Gradients are accumulated over micro-batches, so the maths of each step is unchanged.

Measuring needs a real forward and backward pass. Before any is run, a lower bound of the
activation memory of one image is computed on PyTorch's meta device (shapes only, nothing
allocated): if even that cannot fit, the run is refused before allocating it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnets.errors import UsageError
from resnets.models import create_model
from resnets.models.geometry import fewest_training_images
from resnets.training.memory import (
    cgroup_limit,
    format_bytes,
    is_out_of_memory,
    machine_available_memory,
    parse_memory_budget,
    proc_bytes,
    release_memory,
)
from resnets.training.runtime import (
    Runtime,
    autocast,
    keep_freed_host_memory,
    peak_memory_bytes,
    release_freed_host_memory,
    return_freed_host_memory,
)

MARGIN = 0.85  # the share of the headroom a planned step may take
DATA_SHARE = 0.5  # data above this share of the budget is streamed from disk
# Memory per image is not linear in the batch at small sizes: oneDNN's kernels took 9 MiB per
# image between 2 and 8 images but 3.6 MiB between 32 and 256 (bf16), and in float32 5.3 MiB
# between 32 and 64 but 8 MiB between 64 and 256. So the probes are the whole batch and half
# of it where the estimate says they fit, and a cost extrapolated beyond the largest probe
# is raised by EXTRAPOLATION.
EXTRAPOLATION = 1.25
# On the CPU the probes measure with freed memory handed back (runtime.return_freed_host_memory),
# so each large block has its own mapping and a peak is what the step holds: one probe of the
# chapter's network at 224 px took 0.64 to 0.72 GiB above what was in use, alike in every process.
# With freed memory kept for speed (runtime.keep_freed_host_memory) the same probe took 1.0 to
# 1.8 GiB, changing with the heap's layout from run to run, which no single probe can bound.
# So a plan keeps freed memory only where the whole batch fits with the kept heap's peaks
# raised by KEPT_HEAP over the exact ones; otherwise memory, not time, is what is short, and
# the run keeps the exact peaks, paying for page faults in every step. Measured costs are
# raised by EXACT_FRAGMENTATION for malloc's heap of small blocks (BENCHMARKS.md, "The memory
# plan, a third time").
EXACT_FRAGMENTATION = 1.05
KEPT_HEAP = 2.5
PROBE_PASSES = 2  # forward and backward passes a CPU training probe makes (see _step_probe)
ACTIVATION_UPPER = 4.0  # measured peaks stay below this multiple of the meta-device sum
FLOAT_BYTES = 4


@dataclass(frozen=True)
class Budget:
    """The memory a run may use: `total` in all, of which `used` is taken already."""

    total: int
    used: int
    source: str

    @property
    def headroom(self) -> int:
        return max(0, self.total - self.used)

    def describe(self) -> str:
        return f"{format_bytes(self.total)} ({self.source})"


@dataclass(frozen=True)
class StepCost:
    """Peak memory of a step above what is in use before it: `fixed + per_image * images`."""

    fixed: int
    per_image: int

    def at(self, images: int) -> int:
        return self.fixed + self.per_image * images

    @classmethod
    def fit(cls, points: list[tuple[int, int]]) -> StepCost:
        """The line through two measured (images, bytes) points, never sloping down."""
        (m1, b1), (m2, b2) = points[0], points[-1]
        per_image = max(0, (b2 - b1) // (m2 - m1)) if m2 != m1 else max(0, b1 // max(1, m1))
        return cls(max(0, b1 - per_image * m1), per_image)


@dataclass(frozen=True)
class Plan:
    """What the planner chose: micro-batch sizes (None: the whole batch) and why."""

    micro_batch: int | None
    eval_batch: int
    predicted_peak: int
    budget: Budget
    message: str


# ---- the budget ------------------------------------------------------------------------------


def resident_bytes() -> int:
    """This process's resident memory now."""
    resident = proc_bytes("/proc/self/status", "VmRSS")
    return peak_memory_bytes(torch.device("cpu")) if resident is None else resident


def find_budget(text: str | None, device: torch.device) -> Budget:
    """The memory this run may use on `device`, with where that figure comes from.

    `text` (`--memory-budget`: "6GiB", "80%") overrides; a percentage is of what would
    otherwise be the budget. CUDA: the device's free memory plus what this process holds.
    CPU: this process's resident memory plus what it may still take (the machine's available
    memory, or less under a cgroup limit, as in a container or a batch job).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        used = torch.cuda.memory_allocated(device)
        total, source = free + used, f"free memory of {device}"
    else:
        used = resident_bytes()
        available = machine_available_memory()
        total, source = used + available, "memory available on this machine"
        limit = cgroup_limit()
        if limit is not None and limit.headroom < available:
            total, source = used + limit.headroom, f"cgroup limit of {format_bytes(limit.limit)}"
    if text is not None:
        chosen = parse_memory_budget(text, of=total)
        return Budget(chosen, used, f"--memory-budget {text}")
    return Budget(total, used, source)


# ---- measuring -------------------------------------------------------------------------------


def _reset_peak(device: torch.device) -> bool:
    """Start a new peak measurement; False where the platform cannot."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: writing 5 resets the process's peak resident memory (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = proc_bytes("/proc/self/status", "VmHWM")
    return resident_bytes() if peak is None else peak


def in_use(device: torch.device) -> int:
    """Bytes in use now: allocated on CUDA; resident on the CPU, after malloc has handed its
    free memory back (see `release_freed_host_memory`)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    release_freed_host_memory()
    return resident_bytes()


def measure_peak(work: Callable[[], Any], device: torch.device) -> int | None:
    """The peak bytes that `work()` took above what was in use before it; None if unknown.

    On the CPU the heap is trimmed first, so memory freed by earlier work and kept by malloc
    does not hide what this work takes.
    """
    before = in_use(device)
    if not _reset_peak(device):
        return None
    work()
    return max(0, _peak(device) - before)


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore BatchNorm's running statistics (and every other buffer) after a probe."""
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved[name])
        model.zero_grad(set_to_none=True)


def activation_lower_bound(
    model_name: str, model_kwargs: dict[str, Any], shape: tuple[int, int, int], precision: str
) -> int:
    """Bytes of the outputs of every layer for one image, computed on the meta device.

    A backward pass keeps at least these alive, so a step needs at least this much per
    image; nothing is allocated to find out.
    """
    with torch.device("meta"):
        model = create_model(model_name, **model_kwargs)
    # The shapes are those of training; in eval mode BatchNorm also takes one image whose
    # last map is 1x1, which training mode refuses (one value per channel).
    model.eval()
    total = 0

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        model(torch.empty((1, *shape), device="meta"))
    except (RuntimeError, TypeError, OverflowError) as error:
        if "overflow" not in str(error).lower():
            raise
        raise UsageError(
            f"{model_name} at {shape[1]}x{shape[2]}px: the maps of one image are too large to "
            "even size; use a smaller --image-size"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    return total * (2 if precision in ("bf16", "fp16") else FLOAT_BYTES)


# ---- the plan --------------------------------------------------------------------------------


def _step_probe(
    model: nn.Module, runtime: Runtime, shape: tuple[int, int, int], classes: int, images: int
) -> Callable[[], None]:
    def run() -> None:
        x = torch.zeros((images, *shape), device=runtime.device)
        x = x.contiguous(memory_format=runtime.memory_format)
        # Two passes, as two micro-batches: the first leaves the gradients where its
        # activations were freed, and the second's activations are laid out around them.
        # On the CPU the second pass peaked about 5% above the first (BENCHMARKS.md).
        for _ in range(PROBE_PASSES if runtime.device.type == "cpu" else 1):
            with autocast(runtime.device, runtime.precision):
                logits = model(x)
            labels = torch.zeros(images, dtype=torch.long, device=runtime.device)
            F.cross_entropy(logits.float(), labels).backward()

    return run


def _eval_probe(
    model: nn.Module, runtime: Runtime, shape: tuple[int, int, int], images: int
) -> Callable[[], None]:
    @torch.no_grad()
    def run() -> None:
        x = torch.zeros((images, *shape), device=runtime.device)
        with autocast(runtime.device, runtime.precision):
            model(x.contiguous(memory_format=runtime.memory_format)).float()

    return run


def plan_memory(
    *,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict[str, Any],
    runtime: Runtime,
    shape: tuple[int, int, int],
    batch_size: int | None,
    eval_batch_size: int,
    optimizer_copies: int,
    budget: Budget,
    current: int | None = None,
) -> Plan:
    """Choose micro-batch sizes for training and evaluation that fit `budget`.

    `batch_size` None plans evaluation alone. `optimizer_copies` is how many copies of the
    weights the optimizer and the EMA will add at the first step (momentum: 1, Adam: 2, plus 1
    for an EMA). `current` is a micro-batch already in use (from a resumed run); it is kept
    when it fits. Raises UsageError, before anything is allocated, when not even one image
    can fit.
    """
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    image_bytes = math.prod(shape) * FLOAT_BYTES
    training = batch_size is not None
    batch_size = batch_size or 1
    # Fixed costs: optimizer state and EMA weights (made at the first step), and the batch of
    # input images, of which the float copy and its resized or channels-last copy coexist.
    fixed = optimizer_copies * params + 2 * batch_size * image_bytes
    lower = activation_lower_bound(model_name, model_kwargs, shape, runtime.precision)
    name = f"{model_name} at {shape[1]}x{shape[2]}px, batch {batch_size}"
    if training and fixed + params + lower > budget.headroom:
        raise UsageError(
            f"{name} needs at least {format_bytes(fixed + params + lower)} beyond the "
            f"{format_bytes(budget.used)} in use (weights, gradients, optimizer, inputs, and "
            f"{format_bytes(lower)} of activations for one image), but the memory budget is "
            f"{budget.describe()}; use a smaller --image-size, --batch-size or model, or "
            "another device"
        )
    room = int(MARGIN * budget.headroom)
    upper = ACTIVATION_UPPER * lower  # per image, before anything was measured

    def largest_measured(
        probe: Callable[[int], Callable[[], None]],
        batch: int,
        fixed: int,
        per_input: int,
        least: int = 1,
    ) -> tuple[int, int]:
        """The largest size (at most `batch`, at least `least`) measured to fit `room`, and
        its cost.

        The first probe is as large as the upper estimate allows; each next one doubles the
        size, and runs only if the cost measured so far, extrapolated with a surcharge, says
        it fits: no probe is run that is predicted not to fit. `least` is the fewest images
        a training pass takes (2 where BatchNorm's last map is 1x1); a probe of that many
        stands for a smaller batch too.
        """
        size = max(least, min(batch, int((room - fixed - params) // (upper + per_input))))
        cost = _measured(probe, size)
        while cost + per_input * size + fixed > room and size > least:  # the estimate was low
            size = max(least, size // 2)
            cost = _measured(probe, size)
        while size < batch:
            bigger = min(batch, 2 * size)
            guess = cost + EXTRAPOLATION * (cost / size + per_input) * (bigger - size)
            if fixed + guess + per_input * size > room:
                break
            bigger_cost = _measured(probe, bigger)
            if fixed + bigger_cost + per_input * bigger > room:
                break
            size, cost = bigger, bigger_cost
        return size, cost + per_input * size

    def _measured(probe: Callable[[int], Callable[[], None]], images: int) -> int:
        try:
            taken = measure_peak(probe(images), runtime.device)
        except Exception as error:  # a probe that runs out of memory did not fit
            if not is_out_of_memory(error):
                raise
            release_memory()
            return room + 1
        if taken is None:  # no way to measure here: trust the upper estimate
            return int(upper * images + params)
        return int(EXACT_FRAGMENTATION * taken) if runtime.device.type == "cpu" else taken

    classes = model_kwargs["num_classes"]
    returned = runtime.device.type == "cpu" and return_freed_host_memory()
    with _buffers_kept(model):
        chosen, step_cost = batch_size, 0
        if training:
            model.train()
            least = fewest_training_images(
                model_name, shape[-1], model_kwargs.get("small_input", False),
                model_kwargs.get("stem_stride", 1),
            )
            chosen, step_cost = largest_measured(
                lambda n: _step_probe(model, runtime, shape, classes, n), batch_size, fixed, 0,
                least,
            )
            chosen = min(chosen, batch_size)
        was_training = model.training
        model.eval()
        # An evaluation batch also holds its input images (float, a resized copy, and the
        # mirror image under TTA). Between epochs the gradients and the optimizer's state stay
        # alive while evaluating, so a training run's evaluation carries them too.
        eval_fixed = (optimizer_copies + 1) * params if training else 0
        eval_batch, eval_cost = largest_measured(
            lambda n: _eval_probe(model, runtime, shape, n), eval_batch_size, eval_fixed,
            3 * image_bytes,
        )  # fmt: skip
        eval_cost += eval_fixed
        model.train(was_training)
    if runtime.device.type == "cpu":
        # What malloc's heap of small blocks kept free after the probes goes back, so the
        # first step starts from what is in use.
        release_freed_host_memory()
    if current is not None and current <= chosen:
        chosen = current
    micro = None if chosen >= batch_size else chosen
    kept_eval = eval_fixed + int(KEPT_HEAP * (eval_cost - eval_fixed))
    kept = max(fixed + int(KEPT_HEAP * step_cost), kept_eval) if training else kept_eval
    if returned and micro is None and eval_batch >= eval_batch_size and kept <= room:
        keep_freed_host_memory()  # room to spare: faster steps, within the kept heap's peaks
        returned, taken = False, kept
    else:
        taken = max(fixed + step_cost, eval_cost) if training else eval_cost
    if not training:
        choice = f"evaluation in batches of {eval_batch}"
    elif micro is None:
        choice = f"the whole batch of {batch_size} fits"
    else:
        choice = f"micro-batches of {micro} (gradients accumulated over each batch of {batch_size})"
    evaluation = (
        "" if eval_batch == eval_batch_size or not training
        else f", evaluation in batches of {eval_batch}"
    )
    exact = "; freed memory goes back to the system (exact peaks, slower steps)"
    message = (
        f"memory: {choice}{evaluation}; a step is expected to take {format_bytes(taken)} "
        f"beyond the {format_bytes(budget.used)} in use, of {format_bytes(budget.headroom)} "
        f"left ({budget.source}){exact if returned else ''}"
    )
    return Plan(micro, eval_batch, budget.used + taken, budget, message)


def optimizer_copies(optimizer: str, momentum: float, ema: float) -> int:
    """Copies of the weights the optimizer state and the EMA add."""
    copies = 2 if optimizer == "adamw" else int(momentum > 0)
    return copies + int(ema > 0)

