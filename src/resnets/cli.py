"""The `resnets` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from resnets.errors import ResnetsError
from resnets.models import create_model, default_input_size, list_models
from resnets.summary import count_params, format_count, format_summary, summarize

Handler = Callable[[argparse.Namespace], int]


def _models(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        model = create_model(name)
        row = {"name": name, "params": count_params(model), "input_size": default_input_size(name)}
        if args.macs:
            row["macs"] = summarize(model, row["input_size"])["macs"]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        size = "x".join(map(str, row["input_size"]))
        macs = f"  {format_count(row['macs']):>8} MACs" if "macs" in row else ""
        print(f"{row['name']:<26} {row['params']:>12,} params{macs}  at {size}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    model = create_model(
        args.name,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        small_input=args.small_input,
        width=args.width,
    )
    size = args.input_size or (model.in_channels, *default_input_size(args.name)[1:])
    summary = summarize(model, size, depth=args.depth)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnets",
        description="Residual networks: inspect them, train them on Fashion-MNIST, measure them.",
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
    summary.add_argument("--num-classes", type=_positive_int, help="classifier outputs")
    summary.add_argument("--in-channels", type=_positive_int, help="input image channels")
    summary.add_argument("--small-input", action="store_true", help="3x3 stride-1 stem, no pool")
    summary.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    summary.add_argument("--depth", type=int, default=1, help="1: layers, 2: also each block")
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.set_defaults(handler=_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ResnetsError as error:
        if args.debug:
            raise
        print(f"resnets: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("resnets: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
