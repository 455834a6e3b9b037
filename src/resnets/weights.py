"""A trained network as data: its name, arguments, data spec, input size and weights.

Everything that uses a trained network (prediction, export, fine-tuning) starts from a
`TrainedNetwork`, read from a training checkpoint (`.pt`) or from a safetensors file written
by `resnets export --format safetensors`, without any training code. The safetensors file
holds the weights, and in its string metadata the rest as JSON, under these keys:

    format      "resnets-weights"        version     "1"
    model_name  "resnet18"               model_kwargs  JSON object
    data_spec   JSON object (DataSpec.to_dict())        image_size  "28"
    ood         JSON object (resnets.ood.EnergyThreshold.to_dict()), when the network has one
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.checkpoint_format import (
    EVAL_KEYS,
    find_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    saved_data_spec,
)
from resnets.data.spec import DataSpec
from resnets.errors import ResnetsError, UsageError
from resnets.files import atomic_file
from resnets.models import create_model
from resnets.models.conv import plain_convs
from resnets.ood import EnergyThreshold

SAFETENSORS_FORMAT = "resnets-weights"
SAFETENSORS_VERSION = "1"


@dataclass
class TrainedNetwork:
    """What is needed to rebuild and feed a trained network."""

    model_name: str
    model_kwargs: dict[str, Any]
    spec: DataSpec
    image_size: int
    state_dict: dict[str, torch.Tensor]
    source: Path
    # the energy threshold above which an image is unlike the training data (resnets.ood);
    # None for networks saved before thresholds were measured
    ood: EnergyThreshold | None = None

    def build(self) -> nn.Module:
        """The network with its weights, in eval mode, with plain convolutions (the CPU
        tiny-map path is a training speed-up that export and inference must not see)."""
        model = create_model(self.model_name, **self.model_kwargs)
        model.load_state_dict(self.state_dict)
        return plain_convs(model).eval()

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata (all strings) that describe this network."""
        return {
            "format": SAFETENSORS_FORMAT, "version": SAFETENSORS_VERSION,
            "model_name": self.model_name, "model_kwargs": json.dumps(self.model_kwargs),
            "data_spec": json.dumps(self.spec.to_dict()), "image_size": str(self.image_size),
            **({"ood": json.dumps(self.ood.to_dict())} if self.ood else {}),
        }  # fmt: skip


def load_network(path: str | Path) -> TrainedNetwork:
    """A trained network from a run folder (its best.pt, else last.pt), a checkpoint file, or a
    safetensors file. Raises a one-line error naming the file when it is none of these."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    file = find_checkpoint(path, "best", fallback="last")
    state = load_checkpoint(file, keys=EVAL_KEYS)
    model, _ = model_from_checkpoint(state, file)
    return TrainedNetwork(
        model_name=state["model_name"], model_kwargs=dict(state["model_kwargs"]),
        spec=saved_data_spec(state, file), image_size=int(state["config"]["image_size"]),
        state_dict=model.state_dict(), source=file, ood=EnergyThreshold.from_dict(state.get("ood")),
    )  # fmt: skip


def save_safetensors(network: TrainedNetwork, path: str | Path) -> Path:
    """Write the weights and the metadata above to `path` (atomically)."""
    safetensors_torch = _safetensors()
    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict.items()}
    payload = safetensors_torch.save(tensors, metadata=network.metadata())
    with atomic_file(path) as file:
        file.write(payload)
    return Path(path)


def _from_safetensors(path: Path) -> TrainedNetwork:
    safetensors_torch = _safetensors()
    from safetensors import safe_open  # noqa: PLC0415

    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as file:
            meta = file.metadata() or {}
        tensors = safetensors_torch.load_file(str(path))
    except Exception as error:  # the library raises several kinds for a damaged file
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from error
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise WeightsError(
            f"{path}: a safetensors file without resnets' metadata (model name, arguments, "
            "data spec); write it with `resnets export --format safetensors`"
        )
    try:
        return TrainedNetwork(
            model_name=meta["model_name"], model_kwargs=json.loads(meta["model_kwargs"]),
            spec=DataSpec.from_dict(json.loads(meta["data_spec"])),
            image_size=int(meta["image_size"]), state_dict=tensors, source=path,
            ood=EnergyThreshold.from_dict(json.loads(meta["ood"])) if "ood" in meta else None,
        )  # fmt: skip
    except (KeyError, ValueError, TypeError) as error:
        raise WeightsError(f"{path}: damaged resnets metadata ({error})") from error


def _safetensors() -> Any:
    try:
        import safetensors.torch  # noqa: PLC0415
    except ImportError:
        raise UsageError(
            "safetensors files need the export extra: pip install 'resnets[export]'"
        ) from None
    return safetensors.torch


class WeightsError(ResnetsError):
    """A weights file that is missing, damaged, or not one of ours."""

    exit_code = 2
