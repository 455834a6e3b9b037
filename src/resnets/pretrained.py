"""Start a network from trained weights: torchvision's ImageNet files, or our own.

Our module names are torchvision's (and timm's: both name a ResNet's parts `conv1`, `bn1`,
`layer1`..`layer4`, `fc`), so a state dict saved from torchvision's resnet18..resnet152 loads
into ours key for key. What does not fit is handled as a fine-tuning run needs it:

- the first convolution is adapted to another number of input channels (see
  `adapt_input_conv`);
- the classifier (`fc.weight`, `fc.bias`) is left new when the number of classes differs;
- any other tensor whose shape differs is an error naming it (`strict_shapes=True`, what
  `resnets train --weights` uses), or is left new and reported.

Files are read with `torch.load(weights_only=True)`: a file that holds anything but tensors
and plain data is refused, and no code in it runs. A URL is downloaded only when one is
given (`read_weights`), into torch.hub's cache.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.errors import UsageError, first_line
from resnets.models import ResNet
from resnets.models import create_model as build_model
from resnets.weights import WeightsError, load_network

HEAD = "fc"  # the classifier's module name, ours and torchvision's
FIRST_CONV = "conv1.weight"
CLASSIFIER = ("fc.weight", "fc.bias")


@dataclass
class LoadReport:
    """What `load_pretrained` did with each tensor.

    loaded: copied as they were. adapted: name -> (channels there, channels here) of the first
    convolution. missing: the network's tensors left as initialised (not in the file, the
    classifier for another number of classes, or a shape that differs: see `mismatched`).
    unused: tensors of the file the network has no place for.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, tuple[int, int]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def summary(self) -> str:
        """One line, e.g. "loaded 120 tensors, adapted conv1.weight (3 -> 1 channels), left
        new fc.weight, fc.bias"."""
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        parts += [f"adapted {k} ({a} -> {b} channels)" for k, (a, b) in self.adapted.items()]
        if self.missing:
            parts.append(f"left new {_names(self.missing)}")
        if self.mismatched:
            shapes = [f"{k} {_shape(a)} there, {_shape(b)} here" for k, (a, b) in
                      self.mismatched.items()]  # fmt: skip
            parts.append(f"shapes differ: {_names(shapes, 2)}")
        if self.unused:
            parts.append(f"unused {_names(self.unused)}")
        return ", ".join(parts)


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _shape(shape: tuple[int, ...]) -> str:
    return f"({', '.join(map(str, shape))})"


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The first convolution's filters `(out, in, k, k)` for `channels` input channels.

    The convention of timm's `adapt_input_conv` (timm/models/_manipulate.py), written here
    anew: for one channel the filters are summed over their input channels, so a gray image
    gives what the RGB network gives on that image in all three channels; for more channels
    the filters are repeated ceil(C / in) times, cut to C, and scaled by in / C, so that the
    output keeps its size when the channels carry similar values. timm supports 3 input
    channels only; the same arithmetic serves any number.
    """
    given = weight.shape[1]
    if channels == given:
        return weight.clone()
    work = weight.float()  # sums in full precision, whatever the file's type
    if channels == 1:
        adapted = work.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(channels / given)
        adapted = work.repeat(1, repeats, 1, 1)[:, :channels] * (given / channels)
    return adapted.to(weight.dtype)


def read_weights(source: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in `source` and a short name for it in messages.

    `source`: a torchvision (or any plain) state dict saved with `torch.save`; a resnets run
    folder, checkpoint or safetensors file; or an http(s) URL, downloaded into torch.hub's
    cache (`$TORCH_HOME/hub/checkpoints`) unless it is there already.
    """
    text = str(source)
    if text.startswith(("http://", "https://")):
        return _download(text), text.rsplit("/", 1)[-1] or text
    path = Path(source)
    if path.is_dir() or path.suffix == ".safetensors":
        return dict(load_network(path).state_dict), str(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a foreign or cut-off file
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
            raise WeightsError(
                f"{path}: holds objects other than tensors and plain data; resnets loads only "
                "state dicts (nothing in the file was run)"
            ) from error
        why = first_line(error, 120)
        raise WeightsError(f"{path}: not a readable weights file ({why})") from error
    if isinstance(state, dict) and state.get("format") == "resnets-checkpoint":
        return dict(load_network(path).state_dict), str(path)
    return _state_dict(state, str(path)), str(path)


def _download(url: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{url}: holds objects other than tensors and plain data; resnets loads only "
            "state dicts"
        ) from error
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
        raise WeightsError(
            f"{url}: could not download the weights ({first_line(error, 120)})"
        ) from error
    return _state_dict(state, url)


def _state_dict(state: Any, name: str) -> dict[str, torch.Tensor]:
    """`state` as a state dict: tensors by name ("module." of DataParallel dropped)."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common wrapping (Lightning, many training scripts)
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{name}: not a state dict (a table of tensors by name)")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{name}: not a state dict: {str(bad[0])[:60]} is not a named tensor")
    return {k.removeprefix("module."): v for k, v in state.items()}


def create_model(
    name: str, *, pretrained: str | Path | bool | None = None, **kwargs: Any
) -> ResNet:
    """`resnets.models.create_model(name, **kwargs)`, started from trained weights.

    pretrained: a file or URL as `load_pretrained` takes (a torchvision .pth, a resnets
    checkpoint or safetensors file): the first conv is adapted to `in_channels`, the classifier
    left new for another `num_classes`, and any other shape that differs is an error. Unlike
    timm's, not a flag: resnets downloads nothing it was not given the address of (False is
    accepted: none). This lives here, above the model layer, so that building a network never
    imports the code that reads weight files.
    """
    if pretrained is True:
        raise UsageError(
            "pretrained takes a weights file or URL (resnets has no weights of its own to "
            "download), e.g. pretrained='resnet50-0676ba61.pth'"
        )
    model = build_model(name, **kwargs)
    if pretrained is not None and pretrained is not False:
        load_pretrained(model, pretrained, strict_shapes=True)
    return model


def load_pretrained(
    model: nn.Module,
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    *,
    strict_shapes: bool = False,
) -> LoadReport:
    """Copy the weights that fit into `model` (in place) and say what was done.

    Args:
        model: a resnets network (resnet18..resnet152, the preact ones, ...).
        path_or_state_dict: a file or URL as `read_weights` takes, or a state dict.
        strict_shapes: a tensor (other than the first convolution and the classifier) whose
            shape differs is a WeightsError naming it and both shapes; else it is left new.

    Raises WeightsError (exit code 2) when the file is unreadable, not a state dict, or has
    no tensor the network can use.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, name = _state_dict(dict(path_or_state_dict), "the state dict"), "a state dict"
    else:
        source, name = read_weights(path_or_state_dict)
    return apply_weights(model, source, name, strict_shapes=strict_shapes)


def apply_weights(
    model: nn.Module, source: dict[str, torch.Tensor], name: str, *, strict_shapes: bool = False
) -> LoadReport:
    """`load_pretrained` of a state dict already read by `read_weights` (`name` is what the
    report and errors call it)."""
    report = LoadReport(name)
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        if key not in source:
            report.missing.append(key)
            continue
        tensor = source[key]
        there, here = tuple(tensor.shape), tuple(target.shape)
        if there == here:
            new[key] = tensor
            report.loaded.append(key)
        elif key == FIRST_CONV and _channels_differ(there, here):
            new[key] = adapt_input_conv(tensor, here[1])
            report.adapted[key] = (there[1], here[1])
        elif key in CLASSIFIER and there[1:] == here[1:]:
            report.missing.append(key)  # another number of classes: a new classifier
        elif strict_shapes:
            raise WeightsError(
                f"{name}: {key} is {_shape(there)} there but {_shape(here)} in this network; "
                "the weights are for another model or width"
            )
        else:
            report.missing.append(key)
            report.mismatched[key] = (there, here)
    report.unused = [key for key in source if key not in own]
    if not report.loaded and not report.adapted:
        raise WeightsError(
            f"{name}: none of its {len(source)} tensors fits this network (its names are "
            f"{_names(list(source), 3)}); is it a ResNet's state dict?"
        )
    model.load_state_dict(new, strict=False)  # every tensor in `new` has the model's shape
    return report


def _channels_differ(there: tuple[int, ...], here: tuple[int, ...]) -> bool:
    return len(there) == len(here) == 4 and there[0] == here[0] and there[2:] == here[2:]


# ---- fine-tuning: the classifier apart from the backbone ----------------------------------------


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, classifier) parameters: the classifier is the `fc` module, the backbone the
    rest, each in `model.parameters()` order."""
    if not isinstance(getattr(model, HEAD, None), nn.Module):
        raise UsageError(f"{type(model).__name__} has no classifier named {HEAD!r} to train apart")
    head = {id(p) for p in getattr(model, HEAD).parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) not in head], [p for p in params if id(p) in head]


def freeze_backbone(model: nn.Module) -> None:
    """Train the classifier only: every other parameter stops taking gradients. BatchNorm's
    running statistics are frozen too by `backbone_norms_eval`, called after `model.train()`."""
    backbone, _ = split_parameters(model)
    for param in backbone:
        param.requires_grad_(False)
    backbone_norms_eval(model)


def backbone_norms_eval(model: nn.Module) -> None:
    """Put the backbone's normalisation layers in eval mode: they normalise with their running
    statistics and no longer update them (a frozen backbone computes what it was trained to)."""
    head = getattr(model, HEAD)
    in_head = {id(m) for m in head.modules()}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in in_head:
            module.eval()
