"""The `resnets` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from tqdm import tqdm

from resnets.bench import bench_config, benchmark
from resnets.data import DataOptions, describe, list_datasets
from resnets.errors import ResnetsError, UsageError, first_line
from resnets.export import FORMATS, export_network
from resnets.files import write_atomic
from resnets.models import create_model, default_input_size, list_models
from resnets.models.specs import STEM_STRIDES
from resnets.predict import UNLIKE, Classifier, ImageError, image_files
from resnets.summary import count_params, format_count, format_summary, summarize
from resnets.training import (
    Interrupted,
    TrainConfig,
    distributed,
    evaluate_checkpoint,
    make_config,
    resume_trainer,
    start_trainer,
)
from resnets.training.checkpoint import model_from_checkpoint
from resnets.training.checkpoint_eval import eval_config
from resnets.training.config import PRECISIONS, RECIPES, recipe_note
from resnets.training.factory import nothing_left, preflight, resolve_before_data, resume_config
from resnets.training.loop import seconds_since_process_start
from resnets.training.memory import format_bytes, parse_memory_budget
from resnets.training.progress import DEFAULT_LOG_EVERY, LogEvery
from resnets.training.runtime import Runtime, resolve_device

Handler = Callable[[argparse.Namespace], int]


def _models(args: argparse.Namespace) -> int:
    rows = []
    names = list_models()
    # counting MACs runs every network once: a couple of minutes on a small CPU, so show it
    bar = tqdm(names, desc="counting MACs", unit="model", leave=False,
               disable=not args.macs or not sys.stderr.isatty())  # fmt: skip
    for number, name in enumerate(bar, 1):
        if args.macs and bar.disable:  # a log file: a line per model
            print(f"counting MACs: {name} ({number}/{len(names)})", file=sys.stderr, flush=True)
        model = create_model(name)
        size = default_input_size(name)
        row: dict[str, Any] = {"name": name, "params": count_params(model), "input_size": size}
        if args.macs:
            row["macs"] = summarize(model, size)["macs"]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        shape = "x".join(map(str, row["input_size"]))
        macs = f"  {format_count(row['macs']):>8} MACs" if "macs" in row else ""
        print(f"{row['name']:<26} {row['params']:>12,} params{macs}  at {shape}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    model = create_model(
        args.name,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        small_input=args.small_input,
        width=args.width,
        stem_stride=args.stem_stride,
        stem_pool=args.stem_pool,
    )
    if args.image_size is not None and args.input_size is not None:
        raise UsageError("give --image-size N or --input-size C H W, not both")
    if args.image_size is not None:
        size = (model.in_channels, args.image_size, args.image_size)
    else:
        size = args.input_size or (model.in_channels, *default_input_size(args.name)[1:])
    summary = summarize(model, size, depth=args.depth)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _dry_run(
    config: TrainConfig,
    what: str,
    extra: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    plan: bool = True,
) -> int:
    """Print the settings as YAML (as config.yaml holds them), after checking the device and,
    for training (`plan`), the start of the memory plan on the meta device; `notes` are
    printed as comments first."""
    runtime = Runtime.resolve(config.device, config.precision, config.channels_last)
    memory = preflight(config, runtime.precision) if plan else None
    print(f"# {what}: these settings are valid; it would run on {runtime.device} "
          f"({runtime.precision}); --dry-run read no data and ran nothing")  # fmt: skip
    for note in notes:
        print(f"# {note}")
    if memory is not None:
        print(f"# {memory}")
    print(yaml.safe_dump({**config.to_dict(), **(extra or {})}, sort_keys=False), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    # metrics.csv's `elapsed` counts this process's start-up (Python, torch) too
    started = time.monotonic() - seconds_since_process_start()
    settings = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    log_every = LogEvery.parse(args.log_every)
    if args.resume:
        if args.recipe or args.config:
            raise UsageError(
                "--resume continues a run with its saved settings; drop --recipe/--config"
            )
        resumed = resume_config(args.resume, settings)
        path, state, config = resumed
        if args.dry_run:
            return _dry_run(config, f"resnets train --resume {path}")
        done = nothing_left(*resumed)
        if done is not None:  # said before memory is probed or data read
            if distributed.Dist.from_env().is_main:
                print(done)
            return 0
        trainer = resume_trainer(
            args.resume, settings, resumed=resumed, quiet=args.quiet, started=started,
            log_every=log_every,
        )  # fmt: skip
    elif args.dry_run:
        config = make_config(args.recipe, args.config, settings)
        recipe = recipe_note(args.recipe, config) if args.recipe else None
        config, notes = resolve_before_data(config)
        return _dry_run(config, "resnets train", notes=([recipe] if recipe else []) + notes)
    else:
        config = make_config(args.recipe, args.config, settings)
        recipe = recipe_note(args.recipe, config) if args.recipe else None
        if recipe and not args.quiet and distributed.Dist.from_env().is_main:
            print(f"note: {recipe}", flush=True)
        trainer = start_trainer(config, quiet=args.quiet, started=started, log_every=log_every)
    trainer.fit()
    distributed.shutdown()  # under torchrun; a process that fails exits without it
    return 0


def _eval(args: argparse.Namespace) -> int:
    overrides = {
        "device": args.device, "data_dir": args.data_dir, "test_samples": args.test_samples,
        "eval_batch_size": args.batch_size, "tta": args.tta, "verify": args.verify,
    }  # fmt: skip
    if args.dry_run:
        file, state, config = eval_config(args.run, overrides)
        model_from_checkpoint(state, file)  # the weights fit the network it names
        return _dry_run(config, f"resnets eval {file}", plan=False)
    result = evaluate_checkpoint(args.run, overrides, progress=not args.json)
    if args.json:
        keys = ("dataset", "test_acc", "test_loss", "per_class", "confusion", "images",
                "checkpoint", "epoch", "weights", "ece", "calibration")  # fmt: skip
        print(json.dumps({k: result[k] for k in keys}, indent=2))
        return 0
    if result["note"]:
        print(f"note: {result['note']}")
    print(
        f"{result['checkpoint']} (after epoch {result['epoch']}, {result['weights']} weights), "
        f"{result['images']} {result['dataset']} test images"
    )
    print(f"test accuracy {result['test_acc']:.4f}, test loss {result['test_loss']:.4f}, "
          f"expected calibration error {result['ece']:.4f}\n")  # fmt: skip
    names = list(result["per_class"])
    width = max(map(len, names))
    print(f"{'class':<{width}}  accuracy")
    for name, acc in result["per_class"].items():
        print(f"{name:<{width}}  {acc:.4f}")
    print("\nconfusion matrix (rows: true class, columns: predicted, in class order above)")
    for name, row in zip(names, result["confusion"], strict=True):
        print(f"{name:<{width}}  " + " ".join(f"{n:5d}" for n in row))
    print(f"\nwrote {result['confusion_png']}, {result['calibration_png']} and "
          f"{result['predictions_png']}")  # fmt: skip
    return 0


def _predict(args: argparse.Namespace) -> int:
    classifier = Classifier.from_checkpoint(args.checkpoint, resolve_device(args.device))
    files, problems = image_files(args.images)
    for problem in problems:
        print(f"resnets: error: {problem}", file=sys.stderr)

    def report(error: ImageError) -> None:
        problems.append(str(error))
        print(f"resnets: error: {error}", file=sys.stderr)

    results = classifier.predict(files, args.top_k, args.batch_size, on_error=report)
    if args.explain:
        _write_explanations(classifier, [r.source for r in results], args.explain)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for number, result in enumerate(results):
            width = max(len(name) for name, _ in result.top)
            lines = [f"  {name:<{width}}  {p:.4f}" for name, p in result.top]
            if result.unlike_training:
                lines[0] += f"  ({UNLIKE}: energy {result.energy:.2f})"
            print(("\n" if number else "") + "\n".join([result.source, *lines]))
    return 2 if problems else 0


def _write_explanations(classifier: Classifier, sources: list[str], folder: str) -> None:
    """`FOLDER/NAME.png` per image: the image beside its Grad-CAM heat map (see explain.py)."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--explain {out}: a file, not a folder; name a folder to write into")
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for explanation in classifier.explain(sources):
        stem = Path(explanation.prediction.source).stem
        name = next(
            f"{stem}{suffix}.png"
            for suffix in ("", *(f"-{n}" for n in range(2, len(sources) + 2)))
            if f"{stem}{suffix}.png" not in taken
        )
        taken.add(name)
        write_atomic(out / name, explanation.png())
    print(f"wrote {len(taken)} Grad-CAM picture(s) into {out}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from resnets.serve import Limits, serve  # noqa: PLC0415 (FastAPI and uvicorn: the serve extra)

    classifier = Classifier.from_checkpoint(args.checkpoint, resolve_device(args.device))
    limits = {name: getattr(args, name) for name in Limits.__dataclass_fields__}
    token = args.token or os.environ.get("RESNETS_SERVE_TOKEN") or None
    serve(
        classifier, args.host, args.port, lambda line: print(line, flush=True), token=token,
        no_auth=args.no_auth, allowed_hosts=args.allowed_host, cors_origins=args.cors_origin,
        **limits,
    )  # fmt: skip
    return 0


def _bench(args: argparse.Namespace) -> int:
    options: dict[str, Any] = dict(
        image_size=args.image_size, batch_size=args.batch_size, precision=args.precision,
        device=args.device, steps=args.steps, warmup=args.warmup,
        channels_last=args.channels_last, compile=args.compile, small_input=args.small_input,
        stem_stride=args.stem_stride, stem_pool=args.stem_pool, width=args.width,
        dataset=args.dataset,
        data_dir=args.data_dir, memory_budget=args.memory_budget,
    )  # fmt: skip
    if args.dry_run:
        config = bench_config(args.model, **options)
        return _dry_run(config, "resnets bench", {"steps": args.steps, "warmup": args.warmup})
    result = benchmark(args.model, onnx=args.onnx, **options)
    distributed.shutdown()
    if not distributed.Dist.from_env().is_main:
        return 0  # under torchrun, the first process reports for all
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    kernels = ""
    if result["instruction_set"] is not None:
        bf16 = "native bf16" if result["native_bf16"] else "no native bf16"
        kernels = f" ({result['instruction_set']} kernels, {bf16})"
    print(
        f"{result['model']} at {result['image_size']}px, batch {result['batch_size']}, "
        f"{result['device']}{kernels} {result['precision']} {result['layout']}, "
        f"{result['data']} data"
        f"{' (streamed from disk)' if result['streamed'] else ''}, "
        f"{result['steps']} timed steps"
        f"{', ' + str(result['processes']) + ' processes' if result['processes'] > 1 else ''}"
    )
    precision = result["precision"]
    onnx = result["eval_onnx_images_per_sec"]
    rows = [
        ("train", result["train_images_per_sec"], precision),
        ("eval", result["eval_images_per_sec"], f"{precision}, BatchNorm as trained"),
        ("eval folded", result["eval_folded_images_per_sec"], f"{precision}, BatchNorm folded"),
        ("eval onnx", onnx, result["onnx"]),
    ]
    for name, rate, how in rows:
        shown = "         -" if rate is None else f"{rate:10.1f}"
        print(f"{name:<12} {shown} images/s  ({how})")
    print(f"peak memory {result['peak_memory_bytes'] / 2**20:.0f} MiB")
    print(
        f"{format_count(result['macs_per_image'])} MACs per image forward, about "
        f"{6 * result['macs_per_image'] / 1e9:.2f} GFLOP per training image: "
        f"{result['train_gflops_per_sec']:.0f} GFLOP/s achieved in training"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    result = export_network(
        args.run, args.format, args.output, image_size=args.image_size, force=args.force
    )
    side = result.image_size
    print(f"wrote {result.path} ({format_bytes(result.size_bytes)}, {result.format}; input "
          f"(N, {result.channels}, {side}, {side}) float32, normalised as in training)")
    print(result.check)
    return 0


def _datasets(args: argparse.Namespace) -> int:
    options = DataOptions(data_dir=args.data_dir, progress=False, warn=lambda _: None)
    rows = [describe(name, options, check=not args.no_check) for name in list_datasets()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        if "classes" not in row:
            shape = "classes, channels and size from the images"
        elif row["size"] is None:  # a folder: its colours decide the channels (--color auto)
            shape = (f"{row['classes']} classes, {row['files']} image files at --image-size; "
                     f"{row['colors']}")  # fmt: skip
        else:
            kind = "grey" if row["channels"] == 1 else "RGB"
            side = row["size"]
            shape = f"{row['classes']} classes, {row['channels']}x{side}x{side} {kind}"
        if not row["found"]:
            places = ", ".join(row["looked_in"])
            state = f"not found (looked in {places})" if places else "not found: needs --data-dir"
        elif row["verified"] is None:
            state = f"found at {row['path']}"
        elif row["verified"]:
            state = f"found and verified at {row['path']}"
        else:
            state = f"found at {row['path']} but it does not check: {row['problem']}"
        print(f"{row['name']:<14} {shape}\n{'':<14} {row['summary']}\n{'':<14} from: "
              f"{row['obtained']}\n{'':<14} {state}")  # fmt: skip
    return 0


def _add_train_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so the command line and the Python API cannot drift."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        kind = hint if typing.get_origin(hint) is tuple else (typing.get_args(hint) or (hint,))[0]
        default = f" (default: {field.default})" if field.default is not None else ""
        help_text = field.metadata["help"] + default
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(
                flag, type=float, nargs="+", default=None, metavar="EPOCH", help=help_text
            )
        else:
            parser.add_argument(
                flag, type=kind, default=None, choices=field.metadata["choices"],
                metavar=None if field.metadata["choices"] else field.name.upper(), help=help_text,
            )  # fmt: skip


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, not {text!r}")
    return int(text)


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, not {text!r}") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"expected 0 to 60000 milliseconds, not {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 < seconds <= 3600, not {text}")
    return value


def _byte_size(text: str) -> int:
    """Bytes from "16MiB", "500KB" or "1000000"."""
    if text.strip().endswith("%"):
        raise argparse.ArgumentTypeError(f"expected a size such as 16MiB, not {text!r}")
    try:
        return parse_memory_budget(text, of=0)
    except UsageError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 16MiB, 500KB or 1000000, not {text!r}"
        ) from None


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of resnets: the usage of
    `resnets train` alone is 23 lines, which buried the line that says what is wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


STEM_STRIDE_HELP = (
    "stride of the small-input stem's conv: 2 halves every map after it, a quarter of the "
    "work (with --small-input or a cifar_* model)"
)
STEM_POOL_HELP = "take --stem-stride 2 with a 2x2 max pool after the stem's conv (stride 1)"
DRY_RUN_HELP = (
    "check every setting and print them resolved, as YAML (the run folder's config.yaml), "
    "then stop: no data is read and nothing runs. Useful to check a config file or a long "
    "command line before a long run"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resnets",
        description="Residual networks: inspect them, train them on Fashion-MNIST, MNIST, CIFAR "
        "or your own images, measure them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser("models", help="list every model with its parameter count")
    models.add_argument("--macs", action="store_true", help="also count MACs (slower)")
    models.add_argument("--json", action="store_true", help="print one JSON array")
    models.set_defaults(handler=_models)

    summary = commands.add_parser(
        "summary",
        help="layer-by-layer output shapes, parameters and MACs of one model",
        description="Run one forward pass and print each layer's output shape and parameter "
        "count, then the totals (parameters, multiply-accumulates).",
    )
    summary.add_argument("name", help="a model name (see `resnets models`)")
    summary.add_argument(
        "--input-size", nargs=3, type=_positive_int, metavar=("C", "H", "W"),
        help="input image size (default: the model's channels at 224x224, 32x32 for cifar_*)",
    )  # fmt: skip
    summary.add_argument(
        "--image-size", type=_positive_int, metavar="N",
        help="square input of N x N pixels with the model's channels (like train and bench)",
    )  # fmt: skip
    summary.add_argument("--num-classes", type=_positive_int, help="classifier outputs")
    summary.add_argument("--in-channels", type=_positive_int, help="input image channels")
    summary.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem, no pool")
    summary.add_argument("--stem-stride", type=int, default=1, choices=STEM_STRIDES,
                         help=STEM_STRIDE_HELP)  # fmt: skip
    summary.add_argument("--stem-pool", action="store_true", help=STEM_POOL_HELP)
    summary.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    summary.add_argument("--depth", type=int, default=1, help="1: layers, 2: also each block")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(handler=_summary)

    train = commands.add_parser(
        "train",
        help="train a model (no arguments: the chapter's experiment)",
        description="Train a model on a data set (--dataset; Fashion-MNIST by default). With no "
        "arguments this is the chapter's "
        "experiment: d2l_resnet18 at 96x96, SGD, lr 0.05, batch 256, 5 epochs. Settings come "
        "from the defaults, then --recipe, then --config FILE, then flags. Ctrl-C (or SIGTERM) "
        "saves a checkpoint; --resume DIR continues bit for bit.",
    )
    train.add_argument(
        "--recipe", help=f"named settings: {', '.join(RECIPES)} (see README); fast has "
        "fp32 settings for CPUs without native bf16, chosen by --precision"
    )
    train.add_argument("--config", metavar="FILE", help="settings from a TOML or YAML file")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR (or checkpoint)")
    train.add_argument("--quiet", action="store_true", help="print only the final line")
    train.add_argument(
        "--log-every", default=DEFAULT_LOG_EVERY, metavar="N|Ts",
        help="where standard output is not a terminal (a log file, nohup, CI), a progress line "
        "every N steps or every T seconds (Ts), instead of the progress bar; 0: none "
        f"(default: {DEFAULT_LOG_EVERY})",
    )  # fmt: skip
    train.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    _add_train_settings(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval",
        help="test accuracy, per-class accuracy and confusion matrix of a trained model",
        description="Evaluate a run folder's best checkpoint (its last one if it has no best.pt, "
        "or a checkpoint file) on the test split of the data set it was trained on; writes "
        "confusion.png, calibration.png (a reliability diagram; the expected calibration "
        "error, 15 bins, is printed) and predictions.png (test images with their predicted "
        "classes, the most confident mistakes first, in red) into the run folder.",
    )
    evaluate.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("--data-dir", help="where the data set is (default: as trained)")
    evaluate.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                          help="check data files against published digests (default: as "
                          "trained)")  # fmt: skip
    evaluate.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    evaluate.add_argument("--batch-size", type=_positive_int, help="images per batch")
    evaluate.add_argument("--test-samples", type=_positive_int, help="first N test images only")
    evaluate.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                          help="average with mirror images (default: as trained)")  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--dry-run", action="store_true", help=DRY_RUN_HELP.replace("no data", "the checkpoint "
        "is loaded and its weights checked against its network, but no data")
    )  # fmt: skip
    evaluate.set_defaults(handler=_eval)

    predict = commands.add_parser(
        "predict",
        help="the most probable classes of image files, by a trained network",
        description="Classify image files (PNG, JPEG, BMP, WebP; any size, grey or colour) with "
        "a trained network: a run folder (its best checkpoint, else its last), a checkpoint "
        "file, or a safetensors file from `resnets export`. Each image is prepared as the "
        "training images were. A folder stands for the image files directly in it (not its "
        "sub-folders or hidden files). Exit code: 0 when every image was predicted; 2 when "
        "any file could not be read or a folder held no images (each named on one line on "
        "stderr, the other images still predicted), or for a bad checkpoint or option.",
    )
    predict.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                         help="run folder, .pt checkpoint or .safetensors file")  # fmt: skip
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                         help="image files, or folders of them")  # fmt: skip
    predict.add_argument("--top-k", type=_positive_int, default=5, metavar="K",
                         help="the K most probable classes per image (5)")  # fmt: skip
    predict.add_argument("--batch-size", type=_positive_int, default=64, metavar="N",
                         help="images per forward pass (64)")  # fmt: skip
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    predict.add_argument("--json", action="store_true",
                         help="print one JSON array of {file, predictions: [{class, "
                         "probability}], unlike_training_data, energy}")  # fmt: skip
    predict.add_argument("--explain", metavar="DIR",
                         help="also write DIR/NAME.png per image: the image beside a Grad-CAM "
                         "heat map of where the network found its top class")  # fmt: skip
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser(
        "serve",
        help="serve a trained network over HTTP, with a page to try it in the browser",
        description="Serve a trained network (a run folder, a checkpoint file, or a "
        "safetensors file from `resnets export`) over HTTP: POST /predict takes images "
        "(multipart `file` fields, or one image as the body with an image/* Content-Type) "
        "and answers JSON; GET / is a page to try it, GET /health and /info describe the "
        "server, GET /openapi.json the API. Requests that arrive together are batched. "
        "Needs the serve extra: pip install 'resnets[serve]'.",
    )
    serve.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT_OR_SAFETENSORS",
                       help="run folder, .pt checkpoint or .safetensors file")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: "
                       "every network, think first)")  # fmt: skip
    serve.add_argument("--port", type=_port, default=8000, help="port (8000; 0: any free one)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    serve.add_argument("--max-batch", type=_positive_int, default=32, metavar="N",
                       help="images per forward pass (32; 1: no batching)")  # fmt: skip
    serve.add_argument("--max-wait-ms", type=_milliseconds, default=5.0, metavar="T",
                       help="how long a batch waits for more images once it has one (5)")
    serve.add_argument("--max-images", type=_positive_int, default=64, metavar="N",
                       help="images per request (64)")  # fmt: skip
    serve.add_argument("--max-bytes", type=_byte_size, default=16 * 2**20, metavar="SIZE",
                       help="largest request body, e.g. 16MiB (the default); more: 413")
    serve.add_argument("--max-pixels", type=_positive_int, default=40_000_000, metavar="N",
                       help="most pixels (width x height) of one image (40000000); more: 413")
    serve.add_argument("--queue-limit", type=_positive_int, default=256, metavar="N",
                       help="images in the server at once (256); requests beyond it are "
                       "answered 503 with Retry-After")  # fmt: skip
    serve.add_argument("--top-k", type=_positive_int, default=5, metavar="K",
                       help="classes per image unless a request asks for ?top_k=K (5)")
    serve.add_argument("--read-timeout", type=_seconds, default=30.0, metavar="S",
                       help="seconds a request's headers may take, and again its whole body "
                       "(30); slower: 408")  # fmt: skip
    serve.add_argument("--max-bytes-in-flight", type=_byte_size, default=256 * 2**20,
                       metavar="SIZE", help="body bytes held for all requests together "
                       "(256MiB); more: 503")  # fmt: skip
    serve.add_argument("--max-decoded-bytes", type=_byte_size, default=256 * 2**20,
                       metavar="SIZE", help="decoded size (pixels x bytes per pixel) of one "
                       "request's images (256MiB); more: 413")  # fmt: skip
    serve.add_argument("--max-connections", type=_positive_int, default=512, metavar="N",
                       help="open connections (512); one more is answered 503 and closed")
    serve.add_argument("--keep-alive", type=_seconds, default=5.0, metavar="S",
                       help="seconds an idle connection stays open between requests (5)")
    serve.add_argument("--token", default=None,
                       help="require `Authorization: Bearer TOKEN` on /predict and /info "
                       "(default: $RESNETS_SERVE_TOKEN; none on loopback)")  # fmt: skip
    serve.add_argument("--no-auth", action="store_true",
                       help="serve a non-loopback --host without a token, on purpose")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name answered besides localhost, 127.0.0.1 and [::1] "
                       "(repeatable); others: 421")  # fmt: skip
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="a web origin (https://app.example) whose pages may call the API "
                       "(repeatable; default none)")  # fmt: skip
    serve.set_defaults(handler=_serve)

    bench = commands.add_parser(
        "bench",
        help="training and evaluation images/s and peak memory",
        description="Time training steps (batch building, forward, backward, optimizer step) "
        "and evaluation batches after warm-up, through the project's own data path. Uses the "
        "data set if it is on disk, random images of the same shape otherwise.",
    )
    bench.add_argument("--model", default="d2l_resnet18", help="model name (d2l_resnet18)")
    bench.add_argument("--image-size", type=_positive_int, default=96, help="input side (96)")
    bench.add_argument("--batch-size", type=_positive_int, default=256, help="batch size (256)")
    bench.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="numeric precision (auto: bf16 where native)")  # fmt: skip
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    bench.add_argument("--steps", type=_positive_int, default=20, help="timed batches (20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed batches first (3)")
    bench.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="NHWC memory format (default: where faster)")  # fmt: skip
    bench.add_argument("--compile", action="store_true", help="torch.compile the model")
    bench.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem, no pool")
    bench.add_argument("--stem-stride", type=int, default=1, choices=STEM_STRIDES,
                       help=STEM_STRIDE_HELP)  # fmt: skip
    bench.add_argument("--stem-pool", action="store_true", help=STEM_POOL_HELP)
    bench.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    bench.add_argument("--dataset", default="fashion-mnist", help="data set (fashion-mnist)")
    bench.add_argument("--data-dir", help="where the data set is")
    bench.add_argument("--memory-budget", metavar="SIZE",
                       help="stream images from disk beyond this, e.g. 6GiB or 50%%")  # fmt: skip
    bench.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                       help="also time the exported ONNX model in onnxruntime on the CPU "
                            "(default: when onnxruntime is installed)")  # fmt: skip
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    bench.set_defaults(handler=_bench)

    export = commands.add_parser(
        "export",
        help="write a trained network as ONNX, safetensors or a torch.export program (.pt2)",
        description="Export a run folder's best checkpoint (its last one if it has no best.pt), "
        "a checkpoint file or a safetensors file, with a dynamic batch dimension, then check "
        "the file against PyTorch on two batch sizes. The input is float32 (N, C, S, S), "
        "normalised as in training with the data set's mean and std, which the ONNX file "
        "holds in its metadata with the classes. onnx and safetensors need the export extra: "
        "pip install 'resnets[export]'.",
    )
    export.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="file format")  # fmt: skip
    export.add_argument(
        "--output", metavar="FILE", help="where to write (default: RUN/export/model.FORMAT, or "
        "beside a checkpoint file); replaces only a resnets export unless --force",
    )  # fmt: skip
    export.add_argument("--image-size", type=_positive_int, metavar="S",
                        help="input side in pixels (default: as trained)")  # fmt: skip
    export.add_argument("--force", action="store_true", help="replace any file at --output")
    export.set_defaults(handler=_export)

    datasets = commands.add_parser(
        "datasets",
        help="list the data sets: classes, size, where each would be read from, whether it checks",
        description="List every data set with its classes, channels and size, where it would be "
        "read from (with --data-dir: there), whether it was found, and whether its files match "
        "their published digests.",
    )
    datasets.add_argument("--data-dir", help="look here instead of the default places")
    datasets.add_argument("--no-check", action="store_true", help="do not read files to verify")
    datasets.add_argument("--json", action="store_true", help="print one JSON array")
    datasets.set_defaults(handler=_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    place = distributed.Dist.from_env()
    # under torchrun each process speaks for itself, so its rank comes first
    who = f"rank {place.rank}: " if place.world > 1 else ""
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a reader that went away shows here, not in Python's exit
        return code
    except ResnetsError as error:
        if args.debug:
            raise
        if not place.is_main and (
            isinstance(error, Interrupted)  # the first process saved and says so
            or (isinstance(error, UsageError) and not distributed.active())
        ):
            return error.exit_code  # said once, by the first process
        kind = "" if isinstance(error, Interrupted) else "error: "  # a stop is not an error
        print(f"resnets: {kind}{who}{error}", file=sys.stderr)
        return error.exit_code
    except RuntimeError as error:
        if args.debug or not (place.world > 1 and distributed.peer_failed(error)):
            raise
        print(
            f"resnets: error: {who}stopped because another process of this job failed or "
            f"stopped answering ({_collective_gist(error)}); its own message says why",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as error:  # a second Ctrl-C or SIGTERM, or one outside training
        if args.debug:
            raise
        print(f"resnets: {who}{error or 'interrupted'}", file=sys.stderr)
        return getattr(error, "exit_code", 130)
    except BrokenPipeError:  # the reader of our output went away (`resnets eval R | head`)
        _stdout_to_devnull()
        return 141  # as a shell reports a pipeline's writer stopped by SIGPIPE
    except OSError as error:  # a file we did not expect to fail (a cache, a download folder)
        if args.debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"resnets: error: {who}{where}{error.strerror or error}", file=sys.stderr)
        return 1


def _stdout_to_devnull() -> None:
    """Point standard output at /dev/null, so Python's flush at exit does not hit the closed
    pipe again and print a traceback of its own."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # a test's captured output
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _collective_gist(error: BaseException) -> str:
    """The gist of a collective's error: its first sentence, without the source location."""
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line(error)).split(". ")[0][:160]


if __name__ == "__main__":
    sys.exit(main())
