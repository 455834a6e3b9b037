"""Data-parallel runs under torchrun: the only module that touches torch.distributed.

torchrun starts one process per device and tells each its RANK, WORLD_SIZE and LOCAL_RANK
through the environment. Without them (a plain `resnets train`) the world is one process,
nothing is initialised, and every function here is a cheap no-op, so single-process runs are
exactly what they were.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

# A peer that dies or hangs ends the job after this long instead of blocking it for ever.
TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size and the rank on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Elastic:
    """What torchrun says about restarts: how many happened, how many it allows, and the
    job's rendezvous id (the same in every attempt; "none" when not given)."""

    restart_count: int = 0
    max_restarts: int = 0
    run_id: str = "none"

    @classmethod
    def from_env(cls) -> Elastic:
        return cls(
            restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
            max_restarts=int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)),
            run_id=os.environ.get("TORCHELASTIC_RUN_ID", "none") or "none",
        )


def info() -> Dist:
    """This process's place: from the process group when one is running, else the environment."""
    if active():
        return Dist(dist.get_rank(), dist.get_world_size(), Dist.from_env().local_rank)
    return Dist.from_env()


def active() -> bool:
    """True once `init` has joined a process group of more than one process."""
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    return info().is_main


def init(device: torch.device) -> Dist:
    """Join torchrun's process group (gloo on the CPU, nccl on CUDA) when the world has more
    than one process; `device` is the one this process trains on (cuda:LOCAL_RANK on GPUs)."""
    place = Dist.from_env()
    if place.world <= 1 or active():
        return info()
    store, rank, world = next(dist.rendezvous("env://", timeout=TIMEOUT))
    # torchrun keeps one store for all attempts of a job: the keys of a failed attempt (the
    # addresses of its dead processes) would be read by the next one, whose processes then
    # fail to connect. Each attempt's keys get a prefix of their own.
    attempt = Elastic.from_env().restart_count
    store = dist.PrefixStore(f"resnets/attempt-{attempt}", store)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl", store=store, rank=rank, world_size=world, timeout=TIMEOUT, device_id=device
        )
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    return info()


def shutdown() -> None:
    """Leave the process group once every process is done (the first may still be writing)."""
    global _gloo
    if active():
        dist.barrier()
        dist.destroy_process_group()
    _gloo = None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor summed over all processes, in place (returned for convenience)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(values: list[int]) -> list[int]:
    """Each of `values` maximised over all processes (one collective for all of them)."""
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


def all_reduce_min(value: int) -> int:
    return -all_reduce_max([-value])[0]


def any_true(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a stop, a non-finite loss)."""
    return bool(all_reduce_max([int(flag)])[0]) if active() else flag


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every process (a picklable object)."""
    if not active():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(timeout: timedelta | None = None) -> None:
    """Wait for every process. With `timeout`, wait that long instead of the process group's
    (for work that one process does while the others wait, such as reading a data set)."""
    if not active():
        return
    if timeout is None:
        dist.barrier()
        return
    global _gloo
    if _gloo is None:  # monitored_barrier needs gloo; made once, by every process together
        _gloo = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    dist.monitored_barrier(_gloo, timeout=timeout)


_gloo: Any = None


def peer_failed(error: BaseException) -> bool:
    """True for the error a collective raises here when another process of the job died (its
    connection closed) or did not answer in time: that process's own error is the cause."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer",
                                  "Broken pipe", "Timed out", "timed out")
    )  # fmt: skip


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers computing their statistics over the batch of all
    processes. On CUDA, PyTorch's SyncBatchNorm; elsewhere (DDP refuses SyncBatchNorm on the
    CPU) `CpuSyncBatchNorm`. Parameters and buffers are the same objects under the same names,
    so checkpoints load either way."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for child in model.children():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = CpuSyncBatchNorm  # same state; only forward differs
        else:
            sync_batch_norm(child, device)
    return model


class _Sum(torch.autograd.Function):
    """The sum over processes, differentiable: each process's input affects every process's
    output, so its gradient is the sum of all processes' output gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _summed(tensor: torch.Tensor) -> torch.Tensor:
    return _Sum.apply(tensor)


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are of the images of all processes, with
    collectives that autograd differentiates (so gradients flow through the shared mean and
    variance, as in one process). Two passes (mean, then mean squared deviation) rather than
    sum and sum of squares, so the variance is as exact as BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        count = _summed(count)
        mean = _summed(x.sum(dims)) / count
        centred = x - mean.view(1, -1, 1, 1)
        var = _summed(centred.square().sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def _collective_device() -> torch.device:
    """nccl reduces tensors on the process's GPU; gloo on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
