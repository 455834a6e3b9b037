"""Every named network as one row of data, and `create_model` to build it.

The ImageNet rows are Table 1 of He et al. 2015 ("Deep residual learning", arXiv:1512.03385);
the CIFAR rows are its section 4.2 (6n+2 layers, option-A shortcuts) and He et al. 2016
("Identity mappings", arXiv:1603.05027) for the pre-activation networks.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

from resnets.errors import UsageError
from resnets.models.resnet import ResNet, Stem

IMAGENET_BASIC = (64, 128, 256, 512)
IMAGENET_BOTTLENECK = (256, 512, 1024, 2048)
CIFAR_BASIC = (16, 32, 64)
CIFAR_BOTTLENECK = (64, 128, 256)


@dataclass(frozen=True)
class ModelSpec:
    """A network as data: block kind, blocks per stage, stage widths, and its defaults.

    `input_side` is the side it is described at (`resnets summary`, `resnets models`); None
    means its stem's usual one: 224 for ImageNet stems, 32 for CIFAR ones."""

    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...]
    stem: Stem = "imagenet"
    stem_width: int = 64
    in_channels: int = 3
    num_classes: int = 1000
    options: dict[str, Any] = field(default_factory=dict)
    input_side: int | None = None


def _imagenet(block: str, layers: tuple[int, ...]) -> ModelSpec:
    widths = IMAGENET_BOTTLENECK if block.endswith("bottleneck") else IMAGENET_BASIC
    return ModelSpec(block, layers, widths)


def _cifar(block: str, n: int, **options: Any) -> ModelSpec:
    widths = CIFAR_BOTTLENECK if block.endswith("bottleneck") else CIFAR_BASIC
    return ModelSpec(block, (n, n, n), widths, "cifar", 16, num_classes=10, options=options)


# The chapter's network: conv biases, a bare 1x1 projection, Xavier init, 1 channel, 10 classes,
# shown at the chapter's 96x96 (its shape printout and its training run).
_D2L = ModelSpec(
    "basic", (2, 2, 2, 2), IMAGENET_BASIC, in_channels=1, num_classes=10,
    options={"bias": True, "projection_norm": False, "init": "xavier"}, input_side=96,
)  # fmt: skip
_PREACT_CIFAR = {"stem_norm": False}

MODEL_SPECS: dict[str, ModelSpec] = {
    "resnet18": _imagenet("basic", (2, 2, 2, 2)),
    "resnet34": _imagenet("basic", (3, 4, 6, 3)),
    "resnet50": _imagenet("bottleneck", (3, 4, 6, 3)),
    "resnet101": _imagenet("bottleneck", (3, 4, 23, 3)),
    "resnet152": _imagenet("bottleneck", (3, 8, 36, 3)),
    "preact_resnet18": _imagenet("preact_basic", (2, 2, 2, 2)),
    "preact_resnet34": _imagenet("preact_basic", (3, 4, 6, 3)),
    "preact_resnet50": _imagenet("preact_bottleneck", (3, 4, 6, 3)),
    "preact_resnet101": _imagenet("preact_bottleneck", (3, 4, 23, 3)),
    "preact_resnet152": _imagenet("preact_bottleneck", (3, 8, 36, 3)),
    "d2l_resnet18": _D2L,
    "cifar_resnet20": _cifar("basic", 3, shortcut="A"),
    "cifar_resnet32": _cifar("basic", 5, shortcut="A"),
    "cifar_resnet44": _cifar("basic", 7, shortcut="A"),
    "cifar_resnet56": _cifar("basic", 9, shortcut="A"),
    "cifar_resnet110": _cifar("basic", 18, shortcut="A"),
    "cifar_resnet1202": _cifar("basic", 200, shortcut="A"),
    "cifar_preact_resnet110": _cifar("preact_basic", 18, **_PREACT_CIFAR),
    "cifar_preact_resnet164": _cifar("preact_bottleneck", 18, **_PREACT_CIFAR),
    "cifar_preact_resnet1001": _cifar("preact_bottleneck", 111, **_PREACT_CIFAR),
}

# Options a caller may set on any named model (beyond in_channels and num_classes).
MODEL_OPTIONS = (
    "small_input", "width", "zero_init_residual", "shortcut", "stride_on", "stem_stride",
    "stem_pool",
)  # fmt: skip
STEM_STRIDES = (1, 2)


class UnknownModelError(UsageError):
    """A model name that is not in MODEL_SPECS."""

    def __init__(self, name: str) -> None:
        given = repr(name) if len(repr(name)) <= 60 else f"{repr(name)[:57]}..."
        super().__init__(f"unknown model {given}; choose one of: {', '.join(MODEL_SPECS)}")


def check_stem(
    name: str, small_input: bool, stem_stride: object, stem_pool: object = False
) -> None:
    """Raise UsageError (one line) unless `stem_stride` fits the network's stem: 1 always; 2
    only where the stem is the small-input one (a CIFAR network's, or any with small_input).
    `stem_pool` (a bool) takes that stride 2 with a max pool, so it needs stem_stride 2."""
    if type(stem_stride) is not int or stem_stride not in STEM_STRIDES:
        raise UsageError(f"stem_stride must be 1 or 2, not {stem_stride!r}")
    if stem_stride != 1 and not small_input and MODEL_SPECS[name].stem != "cifar":
        raise UsageError(
            f"stem_stride {stem_stride} applies to the small-input stem, and {name} has the "
            "ImageNet stem (7x7 conv and max pool, already stride 4); add --small-input"
        )
    if type(stem_pool) is not bool:
        raise UsageError(f"stem_pool must be true or false, not {stem_pool!r}")
    if stem_pool and stem_stride != 2:
        raise UsageError(
            "stem_pool takes the small-input stem's stride 2 with a max pool; add --stem-stride 2 "
            "(or --no-stem-pool)"
        )


def list_models(pattern: str | None = None) -> list[str]:
    """Every model name `create_model` accepts, in table order; with `pattern`, those that
    match it as a shell glob (`fnmatch`), e.g. "resnet*" or "*preact*", as timm's does."""
    if pattern is None:
        return list(MODEL_SPECS)
    return [name for name in MODEL_SPECS if fnmatch.fnmatchcase(name, pattern)]


def default_input_size(name: str) -> tuple[int, int, int]:
    """(C, H, W) a named model is described at: its spec's `input_side` (96px for the chapter's
    network), else 224px for ImageNet stems and 32px for CIFAR ones."""
    if name not in MODEL_SPECS:
        raise UnknownModelError(name)
    spec = MODEL_SPECS[name]
    side = spec.input_side or (224 if spec.stem == "imagenet" else 32)
    return (spec.in_channels, side, side)


def _scale(channels: int, width: float, multiple: int) -> int:
    return max(multiple, round(channels * width / multiple) * multiple)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    small_input: bool = False,
    width: float = 1.0,
    in_chans: int | None = None,
    **options: Any,
) -> ResNet:
    """Build the named network.

    Args:
        name: one of `list_models()`.
        num_classes, in_channels: override the model's defaults (1000 and 3 for ImageNet
            networks, 10 and 1 for the chapter's, 10 and 3 for the CIFAR ones).
        small_input: use the 3x3 stride-1 stem without max pool, for 28x28 or 32x32 images.
        width: multiplies every channel count (0.5 halves the network's width).
        options: `zero_init_residual`, `shortcut` ("A", "B", "C"), `stem_stride` (2 halves
            the small-input stem's maps: a quarter of the work, for fast training at 28-32px),
            `stem_pool` (True: that stride 2 by a 2x2 max pool after the stem's conv) and, for
            bottlenecks, `stride_on` ("3x3" or "1x1").
        in_chans: timm's name for `in_channels`.

    Weights to start from are the use layer's: `resnets.create_model(name, pretrained=...)`
    (`resnets.pretrained.create_model`) builds with this and then loads them, so that the
    model layer never reads files of trained weights.
    """
    if in_chans is not None:
        if in_channels is not None and in_channels != in_chans:
            raise UsageError(f"in_chans={in_chans} and in_channels={in_channels} disagree")
        in_channels = in_chans
    return _build(name, num_classes, in_channels, small_input, width, options)


def _build(
    name: str,
    num_classes: int | None,
    in_channels: int | None,
    small_input: bool,
    width: float,
    options: dict[str, Any],
) -> ResNet:
    if name not in MODEL_SPECS:
        raise UnknownModelError(name)
    unknown = set(options) - set(MODEL_OPTIONS)
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(MODEL_OPTIONS)}"
        )
    if not (isinstance(width, int | float) and math.isfinite(width) and width > 0):
        raise UsageError(f"width must be a finite positive number, not {width}")
    spec = MODEL_SPECS[name]
    check_stem(name, small_input, options.get("stem_stride", 1), options.get("stem_pool", False))
    if "stride_on" in options and spec.block != "bottleneck":
        raise UsageError(f"stride_on applies to bottleneck networks only, not {name}")
    expansion = 4 if spec.block.endswith("bottleneck") else 1
    kwargs: dict[str, Any] = {**spec.options, **options}
    stem: Stem = "cifar" if small_input else spec.stem
    widths = tuple(_scale(w, width, expansion) for w in spec.widths)
    try:
        return ResNet(
            spec.block,
            spec.layers,
            widths,
            in_channels=spec.in_channels if in_channels is None else in_channels,
            num_classes=spec.num_classes if num_classes is None else num_classes,
            stem=stem,
            stem_width=_scale(spec.stem_width, width, 1),
            **kwargs,
        )
    except (RuntimeError, TypeError, OverflowError) as error:
        # torch cannot allocate (or even size) the weights: say which setting made them so large
        text = str(error)  # on the meta device: "Storage size calculation overflowed"
        if "allocate" not in text and "overflow" not in text.lower():
            raise
        raise UsageError(
            f"{name} at width {width:g} has {max(widths):.3g} channels in its widest stage, too "
            "many to build; use a width near 1"
        ) from error
