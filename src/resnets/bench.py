"""Throughput and memory of training and evaluation, through the project's own data path."""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.data import DataNotFoundError, Dataset, load_dataset
from resnets.data.datasets import get_entry
from resnets.errors import DataError, UsageError
from resnets.export import export_trained
from resnets.models.fold import fold_batchnorm
from resnets.summary import count_macs
from resnets.training import distributed
from resnets.training.config import TrainConfig, make_config
from resnets.training.evaluate import evaluate
from resnets.training.factory import (
    build_parts,
    data_options,
    device_of,
    fit_to_data,
    join_processes,
)
from resnets.training.loop import build_step_parts
from resnets.training.memory import MemoryFallback
from resnets.training.runtime import (
    Runtime,
    cpu_has_native_bf16,
    peak_memory_bytes,
    reset_peak_memory,
)
from resnets.training.step import train_step
from resnets.weights import TrainedNetwork

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


def onnx_status(device: torch.device, wanted: bool | None) -> str | None:
    """None when the exported ONNX model is to be timed; otherwise why not, in a few words.

    `wanted` None: when onnxruntime is installed. It is timed on the CPU only (its CPU
    provider, so it is compared with PyTorch on the same cores)."""
    if wanted is False:
        return "not asked for"
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if not importlib.util.find_spec(m)]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install 'resnets[export]')"
    if device.type != "cpu":
        return f"timed on the CPU only, and this benchmark ran on {device}"
    return None


def benchmark(
    model: str = "d2l_resnet18",
    *,
    steps: int = 20,
    warmup: int = 3,
    onnx: bool | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Training images/s (batch building, forward, backward, optimizer step) and evaluation
    images/s, each timed over `steps` batches after `warmup` untimed ones, and peak memory.

    Evaluation is timed three ways on the same batches: the network as trained
    (`eval_images_per_sec`), with BatchNorm folded into the convolutions as `resnets eval` and
    prediction run it (`eval_folded_images_per_sec`), and, with `onnx` (default: when
    onnxruntime is installed and the device is the CPU), the network exported to ONNX by
    resnets.export and run by onnxruntime in float32 (`eval_onnx_images_per_sec`; None when
    not timed, `onnx` then says why).

    `settings` as for `bench_config`. Peak memory is the device's peak allocation on a GPU and
    the process's peak resident memory on the CPU (so run one benchmark per process to compare
    them); it is taken after training and evaluation of the network as trained, before the
    folded copy and the ONNX export are made.

    Under torchrun, every process takes its share of each batch of `batch_size` (as in
    training), the rates are of all processes together, and the peak is the largest process's.
    """
    config = bench_config(model, steps=steps, warmup=warmup, **settings)
    image_size, batch_size, compile = config.image_size, config.batch_size, config.compile
    data, source = bench_data(config, batch_size * (warmup + steps))
    place = join_processes(config)  # under torchrun: one share of each batch per process
    runtime = Runtime.resolve(device_of(config, place), config.precision, config.channels_last)
    config = fit_to_data(config, data.spec, quiet=True)
    built = build_parts(config, data, runtime, place, quiet=True)
    network, batches = built.model, built.batches
    fallback = MemoryFallback(None, lambda _: None, config.fewest_images())
    eval_model, parts = build_step_parts(network, config, runtime, place.world, fallback)
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

    def evaluation(eval_model: nn.Module) -> Callable[[Batch], object]:
        return lambda b: evaluate(
            eval_model, [b], device=dev, precision=runtime.precision,
            num_classes=data.spec.num_classes, sharded=place.world > 1,
        )  # fmt: skip

    reset_peak_memory(dev)
    network.train()
    train_seconds = timed(
        batches.train.epoch(0), lambda b: train_step(parts, *b, total=batch_size)
    )
    eval_seconds = timed(batches.test.epoch(0), evaluation(eval_model))
    # of training and evaluation as before, without the copy below; under torchrun the largest
    # process's (each holds its own share and a copy of the model)
    peak = distributed.all_reduce_max([peak_memory_bytes(dev)])[0]
    folded = fold_batchnorm(network)
    folded_model: nn.Module = (
        torch.compile(folded) if compile else folded  # type: ignore[assignment]
    )
    folded_seconds = timed(batches.test.epoch(0), evaluation(folded_model))
    macs = count_macs(network, (data.spec.channels, image_size, image_size))
    train_rate = steps * batch_size / train_seconds
    onnx_note = onnx_status(dev, onnx)
    onnx_rate = None
    if onnx_note is None:
        trained = TrainedNetwork(
            model_name=config.model, model_kwargs=built.model_kwargs,
            spec=data.spec, image_size=image_size,
            state_dict={k: v.detach().cpu() for k, v in network.state_dict().items()},
            source=Path("<resnets bench>"),
        )  # fmt: skip
        onnx_seconds, onnx_note = _time_onnx(trained, lambda: batches.test.epoch(0), timed)
        onnx_rate = steps * batch_size / onnx_seconds
    return {
        "model": model,
        "image_size": image_size,
        "batch_size": batch_size,
        "device": str(dev),
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "layout": "channels-last" if runtime.channels_last else "NCHW",
        # the CPU kernels' instruction set (capped by ATEN_CPU_CAPABILITY where set): timings
        # of an AVX-512 machine and an AVX2 one differ by 2-3x (BENCHMARKS.md)
        "instruction_set": torch.backends.cpu.get_cpu_capability() if dev.type == "cpu" else None,
        "native_bf16": cpu_has_native_bf16() if dev.type == "cpu" else None,
        "compile": compile,
        "data": source,
        "streamed": batches.train.stream,
        "steps": steps,
        "processes": place.world,
        "train_images_per_sec": train_rate,
        "eval_images_per_sec": steps * batch_size / eval_seconds,
        "eval_folded_images_per_sec": steps * batch_size / folded_seconds,
        "eval_onnx_images_per_sec": onnx_rate,
        "onnx": onnx_note,
        "peak_memory_bytes": peak,
        "macs_per_image": macs,
        # Training costs about 3 forward passes (forward, and backward for inputs and weights).
        "train_gflops_per_sec": train_rate * 3 * 2 * macs / 1e9,
    }


def _time_onnx(
    network: TrainedNetwork,
    batches: Callable[[], Iterable[Batch]],
    timed: Callable[[Iterator[Batch], Callable[[Batch], object]], float],
) -> tuple[float, str]:
    """Seconds onnxruntime takes over the timed batches of `batches()`, with the model that
    resnets.export writes (into a temporary folder), and which runtime that was."""
    import onnxruntime  # noqa: PLC0415 (an optional extra)

    with tempfile.TemporaryDirectory(prefix="resnets-bench-") as folder:
        exported = export_trained(network, "onnx", Path(folder) / "model.onnx")
        session = onnxruntime.InferenceSession(
            str(exported.path), providers=["CPUExecutionProvider"]
        )
    name = session.get_inputs()[0].name

    def run_one(batch: Batch) -> object:
        x, y = batch
        logits = session.run(None, {name: x.float().contiguous().numpy()})[0]
        return int((torch.from_numpy(logits).argmax(1) == y).sum())

    seconds = timed(iter(batches()), run_one)
    return seconds, f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider, fp32"
