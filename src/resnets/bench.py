"""Throughput and memory of training and evaluation, through the project's own data path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnets.data import DataNotFoundError, Dataset, load_dataset
from resnets.data.datasets import get_entry
from resnets.errors import DataError, UsageError
from resnets.summary import count_macs
from resnets.training import distributed
from resnets.training.config import TrainConfig, make_config
from resnets.training.evaluate import evaluate
from resnets.training.factory import (
    build_batches,
    build_model,
    data_options,
    device_of,
    fit_to_data,
    join_processes,
)
from resnets.training.loop import build_optimizer
from resnets.training.memory import MemoryFallback
from resnets.training.runtime import Runtime, peak_memory_bytes, reset_peak_memory
from resnets.training.step import StepParts, train_step

Batch = tuple[torch.Tensor, torch.Tensor]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bench_data(config: TrainConfig, images: int) -> tuple[Dataset, str]:
    """The configured data set when it is already on disk (never downloaded for a benchmark);
    otherwise random images of its shape, which cost the same to process."""
    entry = get_entry(config.dataset)
    options = replace(data_options(config, quiet=True), download=False)
    try:
        data = load_dataset(
            config.dataset, options, train_samples=images, test_samples=images
        )
        return data, config.dataset
    except (DataNotFoundError, DataError):
        if entry.spec is None:
            raise
        spec = entry.spec
        g = torch.Generator().manual_seed(0)
        shape = (images, spec.channels, spec.size, spec.size)
        pixels = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        labels = torch.randint(0, spec.num_classes, (images,), generator=g)
        data = Dataset.from_tensors(spec, pixels, labels, pixels.clone(), labels.clone())
        return data, "synthetic"


# The benchmark's own defaults where they differ from a training run's (the chapter's model at
# 96 px, batch 256, and whatever precision and layout the hardware favours).
BENCH_DEFAULTS: dict[str, Any] = {"model": "d2l_resnet18", "image_size": 96, "batch_size": 256}


def bench_config(
    model: str = "d2l_resnet18", *, steps: int = 20, warmup: int = 3, **settings: Any
) -> TrainConfig:
    """The settings `benchmark` runs with, validated; UsageError names the first bad one.

    `settings` are TrainConfig fields (image_size, batch_size, precision, device,
    channels_last, compile, small_input, width, dataset, data_dir, memory_budget, ...);
    evaluation batches are as large as training ones.
    """
    chosen = {**BENCH_DEFAULTS, **settings, "model": model}
    chosen.setdefault("eval_batch_size", chosen["batch_size"])
    config = make_config(overrides=chosen)
    if not (isinstance(steps, int) and steps >= 1):
        raise UsageError(f"steps must be a positive integer, not {steps}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise UsageError(f"warmup must be 0 or more batches, not {warmup}")
    return config


def benchmark(
    model: str = "d2l_resnet18", *, steps: int = 20, warmup: int = 3, **settings: Any
) -> dict[str, Any]:
    """Training images/s (batch building, forward, backward, optimizer step) and evaluation
    images/s, each timed over `steps` batches after `warmup` untimed ones, and peak memory.

    `settings` as for `bench_config`. Peak memory is the device's peak allocation on a GPU and
    the process's peak resident memory on the CPU (so run one benchmark per process to compare
    them).

    Under torchrun, every process takes its share of each batch of `batch_size` (as in
    training), the rates are of all processes together, and the peak is the largest process's.
    """
    config = bench_config(model, steps=steps, warmup=warmup, **settings)
    image_size, batch_size, compile = config.image_size, config.batch_size, config.compile
    data, source = bench_data(config, batch_size * (warmup + steps))
    place = join_processes(config)  # under torchrun: one share of each batch per process
    runtime = Runtime.resolve(device_of(config, place), config.precision, config.channels_last)
    config = fit_to_data(config, data.spec, quiet=True)
    network = build_model(config, data.spec, runtime)
    eval_model: nn.Module = (
        torch.compile(network) if compile else network  # type: ignore[assignment]
    )
    step_model = eval_model
    if place.world > 1:
        ddp = DistributedDataParallel(
            network, device_ids=[runtime.device] if runtime.device.type == "cuda" else None
        )
        step_model = torch.compile(ddp) if compile else ddp  # type: ignore[assignment]
    batches = build_batches(config, data, runtime, quiet=True, place=place)
    optimizer = build_optimizer(network, config)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    parts = StepParts(
        network, step_model, optimizer, scaler, MemoryFallback(None, lambda _: None), None,
        runtime.device, runtime.precision, world=place.world,
    )  # fmt: skip
    dev = runtime.device

    def timed(batches: Iterator[Batch], run_one: Callable[[Batch], object]) -> float:
        for _, batch in zip(range(warmup), batches, strict=False):
            run_one(batch)
        _synchronize(dev)
        distributed.barrier()  # every process starts and stops the clock together
        start = time.perf_counter()
        for batch in batches:
            run_one(batch)
        _synchronize(dev)
        distributed.barrier()
        return time.perf_counter() - start

    reset_peak_memory(dev)
    network.train()
    train_seconds = timed(
        batches.train.epoch(0), lambda b: train_step(parts, *b, total=batch_size)
    )
    eval_seconds = timed(
        batches.test.epoch(0),
        lambda b: evaluate(eval_model, [b], device=dev, precision=runtime.precision,
                           num_classes=data.spec.num_classes, sharded=place.world > 1),
    )  # fmt: skip
    # the largest process's peak (each process holds its own share and a copy of the model)
    peak = distributed.all_reduce_max([peak_memory_bytes(dev)])[0]
    macs = count_macs(network, (data.spec.channels, image_size, image_size))
    train_rate = steps * batch_size / train_seconds
    return {
        "model": model,
        "image_size": image_size,
        "batch_size": batch_size,
        "device": str(dev),
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "compile": compile,
        "data": source,
        "streamed": batches.train.stream,
        "steps": steps,
        "processes": place.world,
        "train_images_per_sec": train_rate,
        "eval_images_per_sec": steps * batch_size / eval_seconds,
        "peak_memory_bytes": peak,
        "macs_per_image": macs,
        # Training costs about 3 forward passes (forward, and backward for inputs and weights).
        "train_gflops_per_sec": train_rate * 3 * 2 * macs / 1e9,
    }
