"""Throughput and memory of training and evaluation, through the project's own data path."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from resnets.data import DataNotFoundError, Dataset, load_fashion_mnist
from resnets.summary import count_macs
from resnets.training.config import make_config
from resnets.training.evaluate import evaluate
from resnets.training.loop import Trainer
from resnets.training.runtime import peak_memory_bytes, reset_peak_memory

Batch = tuple[torch.Tensor, torch.Tensor]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bench_data(data_dir: str | None, images: int) -> tuple[Dataset, str]:
    """The real Fashion-MNIST when it is already on disk (never downloaded for a benchmark);
    otherwise random images of the same shape, which cost the same to process."""
    try:
        data = load_fashion_mnist(
            data_dir, download=False, progress=False, train_samples=images, test_samples=images
        )
        return data, "fashion-mnist"
    except DataNotFoundError:
        g = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (images, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (images,), generator=g)
        return Dataset(pixels, labels, pixels.clone(), labels.clone()), "synthetic"


def benchmark(
    model: str = "d2l_resnet18",
    *,
    image_size: int = 96,
    batch_size: int = 256,
    precision: str = "auto",
    device: str = "auto",
    steps: int = 20,
    warmup: int = 3,
    channels_last: bool | None = None,
    compile: bool = False,
    small_input: bool = False,
    width: float = 1.0,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Training images/s (batch building, forward, backward, optimizer step) and evaluation
    images/s, each timed over `steps` batches after `warmup` untimed ones, and peak memory.

    Peak memory is the device's peak allocation on a GPU and the process's peak resident memory
    on the CPU (so run one benchmark per process to compare them).
    """
    config = make_config(
        overrides={
            "model": model, "image_size": image_size, "batch_size": batch_size,
            "eval_batch_size": batch_size, "precision": precision, "device": device,
            "channels_last": channels_last, "compile": compile, "small_input": small_input,
            "width": width, "data_dir": data_dir,
        }
    )  # fmt: skip
    data, source = bench_data(data_dir, batch_size * (warmup + steps))
    trainer = Trainer(config, data=data, quiet=True, log=lambda _: None, run_dir="unused")
    dev = trainer.device

    def timed(batches: Iterator[Batch], run_one: Callable[[Batch], object]) -> float:
        for _, batch in zip(range(warmup), batches, strict=False):
            run_one(batch)
        _synchronize(dev)
        start = time.perf_counter()
        for batch in batches:
            run_one(batch)
        _synchronize(dev)
        return time.perf_counter() - start

    reset_peak_memory(dev)
    trainer.model.train()
    train_seconds = timed(trainer.train_batches.epoch(0), lambda b: trainer.train_step(*b))
    eval_seconds = timed(
        trainer.test_batches.epoch(0),
        lambda b: evaluate(trainer.step_model, [b], device=dev, precision=trainer.precision),
    )
    macs = count_macs(trainer.model, (1, image_size, image_size))
    train_rate = steps * batch_size / train_seconds
    return {
        "model": model,
        "image_size": image_size,
        "batch_size": batch_size,
        "device": str(dev),
        "precision": trainer.precision,
        "channels_last": trainer.channels_last,
        "compile": compile,
        "data": source,
        "steps": steps,
        "train_images_per_sec": train_rate,
        "eval_images_per_sec": steps * batch_size / eval_seconds,
        "peak_memory_bytes": peak_memory_bytes(dev),
        "macs_per_image": macs,
        # Training costs about 3 forward passes (forward, and backward for inputs and weights).
        "train_gflops_per_sec": train_rate * 3 * 2 * macs / 1e9,
    }
