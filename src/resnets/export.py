"""A trained network as a file other programs can run: ONNX, safetensors or a torch.export
program (.pt2), each checked against PyTorch before it takes its place.

Every format takes float32 images (N, C, S, S) with any batch N, normalised as in training:
pixels scaled to [0, 1], then `(x - mean) / std` per channel, with the data spec's mean and
std. The caller normalises; the files do not. The ONNX file carries that spec (classes, mean,
std, model, image size) in its metadata_props, the .pt2 file in its extra file
`resnets.json`, the safetensors file in its metadata (see resnets.weights).

A file is written beside its place, checked there, and renamed into place only if it agrees
with PyTorch, so a failed export leaves whatever was there before.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.errors import ResnetsError, UsageError, first_line
from resnets.files import fsync_dir, write_atomic
from resnets.weights import SAFETENSORS_FORMAT, TrainedNetwork, load_network, save_safetensors

FORMATS = ("onnx", "safetensors", "pt2")
# What each format needs beyond torch (the `export` extra).
NEEDS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "safetensors": ("safetensors",),
    "pt2": (),
}
# Chosen explicitly so a newer torch does not change the file under its readers. 18 is the
# torch.export-based exporter's own opset (no version conversion) and onnxruntime >= 1.14 runs it.
ONNX_OPSET = 18
# float32; the exports measured 1e-6 on the tiny networks of the tests. An absolute bound where
# the logits are at most 1, else this share of the largest: float32 keeps about 7 digits, so a
# barely trained network's logits of 1e6 (resnets bench exports one) differ by whole units.
TOLERANCE = 1e-4
CHECK_BATCHES = (1, 3)  # two batch sizes, neither the example's 2: the batch really is dynamic
EXPORT_FORMAT = "resnets-export"  # marks the ONNX and .pt2 files resnets wrote
PT2_EXTRA = "resnets.json"
INPUT_DOC = (
    "images: float32 (N, C, S, S), any N; pixels scaled to [0, 1], then (x - mean) / std per "
    "channel with this file's mean and std. logits: (N, number of classes), in the order of "
    "classes; softmax gives probabilities"
)


@dataclass(frozen=True)
class ExportResult:
    """What `export_network` wrote and how it was checked."""

    path: Path
    format: str
    size_bytes: int
    channels: int
    image_size: int
    max_abs_diff: float
    check: str  # a sentence: who agreed with PyTorch, by how much, on which batches


def export_network(
    source: str | Path,
    format: str,
    output: str | Path | None = None,
    *,
    image_size: int | None = None,
    force: bool = False,
) -> ExportResult:
    """Export the trained network at `source` (run folder, checkpoint or safetensors file).

    `output` defaults to `RUN/export/model.EXT` for a run folder, `NAME.EXT` beside a file. An
    existing file there is replaced only if resnets exported it, or with `force`. The input
    side is `image_size` (default: the trained one). Raises a one-line ResnetsError when an
    extra is missing, the output is not ours, or the export disagrees with PyTorch.
    """
    _check_format(format)
    source = Path(source)
    target = Path(output) if output is not None else default_output(source, format)
    _check_target(target, format, force)
    return export_trained(load_network(source), format, target, image_size=image_size)


def export_trained(
    network: TrainedNetwork, format: str, target: str | Path, *, image_size: int | None = None
) -> ExportResult:
    """Export a network held in memory (e.g. one `resnets bench` just built) to `target`,
    checked against PyTorch and renamed into place as `export_network` does, which calls it
    after reading its source. Unlike `export_network` it replaces whatever `target` is."""
    _check_format(format)
    target = Path(target)
    size = image_size if image_size is not None else network.image_size
    model = network.build()
    example = _inputs(network, size, 2)
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as error:
        raise UsageError(
            f"--image-size {size} does not fit {network.model_name}: {first_line(error)}"
        ) from None
    write, check = {
        "onnx": (_onnx_writer, _onnx_check),
        "safetensors": (_safetensors_writer, _safetensors_check),
        "pt2": (_pt2_writer, _pt2_check),
    }[format]
    allowed = TOLERANCE * max(1.0, _largest_logit(model, network, size))
    with _staged(target) as staged:
        write(network, model, example, size, staged)
        with _exporting(f"reading back the {format} file"):
            diff, check_sentence = check(network, model, size, staged)
        if not diff <= allowed:  # also catches NaN
            raise ExportCheckError(
                f"{target}: {check_sentence.replace('agrees', 'disagrees')}, more than "
                f"{allowed:.1e}; nothing was written"
            )
    return ExportResult(
        target, format, target.stat().st_size, network.spec.channels, size, diff, check_sentence
    )


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    require_extra(format)


def require_extra(format: str) -> None:
    """Raise a one-line UsageError naming the install command when `format` lacks a package."""
    missing = []
    for name in NEEDS[format]:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(
            f"--format {format} needs {' and '.join(missing)}, which is not installed: "
            "pip install 'resnets[export]'"
        )


def default_output(source: Path, format: str) -> Path:
    """`RUN/export/model.EXT` for a run folder; `NAME.EXT` beside a checkpoint or weights file."""
    if source.is_dir():
        return source / "export" / f"model.{format}"
    return source.with_suffix(f".{format}")


def is_our_export(path: Path, format: str) -> bool:
    """Whether `path` is a `format` file that resnets exported (so replacing it loses nothing
    of the user's)."""
    try:
        if format == "safetensors":
            from safetensors import safe_open  # noqa: PLC0415

            with safe_open(str(path), framework="pt") as file:
                return (file.metadata() or {}).get("format") == SAFETENSORS_FORMAT
        if format == "onnx":
            import onnx  # noqa: PLC0415

            props = onnx.load(str(path), load_external_data=False).metadata_props
            return any(p.key == "resnets.format" and p.value == EXPORT_FORMAT for p in props)
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{PT2_EXTRA}") for name in archive.namelist())
    except Exception:  # any reader's error: not a file we can recognise, so not ours
        return False


def export_metadata(network: TrainedNetwork, image_size: int) -> dict[str, str]:
    """What a reader needs to feed the exported network: strings, for ONNX's metadata_props."""
    spec = network.spec
    return {
        "resnets.format": EXPORT_FORMAT, "resnets.version": "1",
        "model_name": network.model_name, "model_kwargs": json.dumps(network.model_kwargs),
        "image_size": str(image_size), "channels": str(spec.channels),
        "classes": json.dumps(list(spec.classes)), "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)), "data_spec": json.dumps(spec.to_dict()),
        "input": INPUT_DOC,
    }  # fmt: skip


def _check_target(target: Path, format: str, force: bool) -> None:
    if target.suffix != f".{format}":
        raise UsageError(f"{target}: a --format {format} file's name must end in .{format}")
    if target.is_dir():
        raise UsageError(f"{target}: is a folder; give --output a file name")
    if target.exists() and not force and not is_our_export(target, format):
        raise UsageError(
            f"{target}: exists and is not a resnets {format} export; choose another --output "
            "or add --force to replace it"
        )


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A path with `target`'s name in a private folder beside it; renamed onto `target` if the
    block ends without error. The folder goes either way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        staged = folder / target.name
        yield staged
        os.replace(staged, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _inputs(network: TrainedNetwork, size: int, batch: int) -> torch.Tensor:
    """Normalised-looking random images, the same on every call."""
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, network.spec.channels, size, size, generator=generator)


def _compare(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
             network: TrainedNetwork, size: int) -> float:  # fmt: skip
    """The largest absolute difference between `run` and `model` over CHECK_BATCHES."""
    worst = 0.0
    with torch.no_grad():
        for batch in CHECK_BATCHES:
            x = _inputs(network, size, batch)
            got, want = run(x), model(x)
            if got.shape != want.shape:
                return float("inf")
            worst = max(worst, (got - want).abs().max().item())
    return worst


def _largest_logit(model: nn.Module, network: TrainedNetwork, size: int) -> float:
    """The largest absolute logit of `model` on the check batches."""
    with torch.no_grad():
        return max(model(_inputs(network, size, b)).abs().max().item() for b in CHECK_BATCHES)


def _on_batches(who: str, diff: float) -> str:
    batches = " and ".join(map(str, CHECK_BATCHES))
    return f"{who} agrees with PyTorch: max abs difference {diff:.1e} on batches of {batches}"


@contextlib.contextmanager
def _exporting(what: str) -> Iterator[None]:
    """The exporters' warnings and log lines hushed; their failures as one line."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." and the like
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ResnetsError:
        raise
    except Exception as error:
        raise ExportError(f"{what} failed: {first_line(error)}") from error
    finally:
        logger.setLevel(level)


# ONNX. torch 2.13 has two exporters; both export these networks with a dynamic batch and
# both fold BatchNorm. We use the torch.export-based one (dynamo=True, the default since torch
# 2.9): the legacy TorchScript exporter is deprecated and warns on every call, and this one
# traces the network the same way as the .pt2 export, so the two formats cannot differ in
# what they captured. Its optimizer folds each eval-mode BatchNorm into the convolution before
# it, so the file holds Conv, Relu, Add, ... and no BatchNormalization node.


def _onnx_writer(network: TrainedNetwork, model: nn.Module, example: torch.Tensor,
                 size: int, path: Path) -> None:  # fmt: skip
    with _exporting("the ONNX export (torch.onnx.export)"):
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            input_names=["images"], output_names=["logits"],
        )  # fmt: skip
        assert program is not None  # dynamo=True returns the program
        proto = program.model_proto
    for key, value in export_metadata(network, size).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"resnets {network.model_name}. {INPUT_DOC}"
    write_atomic(path, proto.SerializeToString())


def _onnx_check(network: TrainedNetwork, model: nn.Module, size: int,
                path: Path) -> tuple[float, str]:  # fmt: skip
    import onnxruntime  # noqa: PLC0415

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    diff = _compare(model, run, network, size)
    return diff, _on_batches("onnxruntime", diff)


# safetensors: the weights and the model's name, arguments and data spec (resnets.weights);
# read back with load_network, as `resnets predict` and Python users read it.


def _safetensors_writer(network: TrainedNetwork, model: nn.Module, example: torch.Tensor,
                        size: int, path: Path) -> None:  # fmt: skip
    save_safetensors(network, path)


def _safetensors_check(network: TrainedNetwork, model: nn.Module, size: int,
                       path: Path) -> tuple[float, str]:  # fmt: skip
    loaded = load_network(path)
    same = loaded.state_dict.keys() == network.state_dict.keys() and all(
        torch.equal(loaded.state_dict[k], v) for k, v in network.state_dict.items()
    )
    if not same or loaded.metadata() != network.metadata():
        return float("inf"), "load_network reads back other weights or metadata"
    diff = _compare(model, loaded.build(), network, size)
    return diff, _on_batches("load_network", diff)


# pt2: torch.export with a dynamic batch. build() has replaced resnets' Conv2d (its CPU
# tiny-map path) by plain nn.Conv2d, so the program holds ordinary convolutions.


def _pt2_writer(network: TrainedNetwork, model: nn.Module, example: torch.Tensor,
                size: int, path: Path) -> None:  # fmt: skip
    with _exporting("torch.export"):
        program = torch.export.export(
            model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
        buffer = io.BytesIO()
        extra = {PT2_EXTRA: json.dumps(export_metadata(network, size), indent=1)}
        torch.export.save(program, buffer, extra_files=extra)
    write_atomic(path, buffer.getvalue())


def _pt2_check(network: TrainedNetwork, model: nn.Module, size: int,
               path: Path) -> tuple[float, str]:  # fmt: skip
    loaded: Any = torch.export.load(path).module()
    diff = _compare(model, loaded, network, size)
    return diff, _on_batches("torch.export.load", diff)


class ExportError(ResnetsError):
    """An exporter that failed on the network: the message is its first line."""


class ExportCheckError(ResnetsError):
    """An exported file that does not compute what the PyTorch network computes."""
