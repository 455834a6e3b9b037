"""The sides of a named network's feature maps at an input size, from its spec row alone.

BatchNorm in training mode normalises each channel over the batch and the map; with one value
per channel (one image whose map is 1x1) there is nothing to normalise and PyTorch raises. The
smallest map a network's BatchNorm sees is its last stage's, so whether a training batch of
`n` images can train follows from that side: computed here without building the network (a
meta-device pass of cifar_resnet1202 takes seconds), so settings are checked before any data
is read. tests/test_matrix.py checks these sides against real forward passes.
"""

from __future__ import annotations

from resnets.errors import UsageError
from resnets.models.specs import MODEL_SPECS, UnknownModelError


def _halved(side: int) -> int:
    """A map's side after a stride-2 layer of these networks: every one pads k // 2, so the
    output is ceil(side / 2) (option-A shortcuts subsample [::2], which agrees)."""
    return (side + 1) // 2


def map_sides(
    name: str, image_size: int, small_input: bool = False, stem_stride: int = 1
) -> tuple[int, ...]:
    """The side of the stem's output map and of each stage's, for a square input of
    `image_size` pixels (width, channels and classes change none of them)."""
    if name not in MODEL_SPECS:
        raise UnknownModelError(name)
    spec = MODEL_SPECS[name]
    side = image_size
    if spec.stem == "imagenet" and not small_input:
        side = _halved(_halved(side))  # the 7x7 stride-2 convolution, then the max pool
    elif stem_stride == 2:
        side = _halved(side)  # the small-input stem's 3x3 convolution at stride 2
    sides = [side]
    for index in range(len(spec.layers)):
        if index > 0:
            side = _halved(side)
        sides.append(side)
    return tuple(sides)


def fewest_training_images(
    name: str, image_size: int, small_input: bool = False, stem_stride: int = 1
) -> int:
    """The fewest images a training-mode forward pass can take: 2 where the last map is 1x1
    (BatchNorm needs more than one value per channel), else 1."""
    return 2 if map_sides(name, image_size, small_input, stem_stride)[-1] == 1 else 1


def smallest_side_for_one_image(name: str, small_input: bool = False, stem_stride: int = 1) -> int:
    """The smallest input side whose last map is larger than 1x1, so one image can train: one
    more than the network's total stride (every stride-2 layer rounds up), read off `map_sides`
    at a side that every layout divides exactly."""
    side = 2**12
    return side // map_sides(name, side, small_input, stem_stride)[-1] + 1


def check_training_batch(
    name: str, image_size: int, small_input: bool, images: int, what: str, stem_stride: int = 1
) -> None:
    """Raise UsageError (one line) when a training-mode pass of `images` images cannot run:
    `what` names the setting that gave the number, e.g. "batch size 1"."""
    fewest = fewest_training_images(name, image_size, small_input, stem_stride)
    if images >= fewest:
        return
    raise UsageError(
        f"{name} at {image_size}px ends in a 1x1 map, so BatchNorm needs at least {fewest} "
        f"images per training pass, not {what}; use {fewest} or more, or an image size of "
        f"{smallest_side_for_one_image(name, small_input, stem_stride)} or more"
    )
