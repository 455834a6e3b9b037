"""The checkpoint file format: written atomically, holding all that continuing bit for bit needs.

Version 2 also holds what a reader needs without the training code: the model's name and
keyword arguments (`create_model(state["model_name"], **state["model_kwargs"])`) and the data
spec (classes, channels, size, statistics). Version 1 files (Fashion-MNIST only) are upgraded
on loading.

This module is the format alone, below both training (which writes checkpoints) and the use
layer (weights, predict, export, which read them): it imports no training code.
`resnets.training.checkpoint` adds what needs the training settings and re-exports the rest.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.data.mnist import FASHION_MNIST
from resnets.data.spec import DataSpec
from resnets.errors import ResnetsError, UsageError, shown
from resnets.files import atomic_file
from resnets.models import create_model

FORMAT = "resnets-checkpoint"
VERSION = 2
RECORD_BYTES = 192  # a tensor's zip entry: header, name, alignment, directory entry


class CheckpointError(ResnetsError):
    """A file that is missing, truncated, or not a resnets checkpoint.

    Exit code 2, like any bad input: the fix is in what the command was pointed at.
    """

    exit_code = 2


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically: temporary file in the same folder, fsync, rename.

    A crash or a full disk at any moment leaves either the old file or the new one, never a
    half-written one.
    """
    with atomic_file(path) as file:
        torch.save({"format": FORMAT, "version": VERSION, **state}, file)
    return Path(path)


def checkpoint_bytes(state: Any) -> int:
    """About the size of `state` saved: its tensors' bytes, and a zip record for each."""
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size() + RECORD_BYTES
    if isinstance(state, dict):
        return sum(checkpoint_bytes(value) for value in state.values())
    if isinstance(state, list | tuple):
        return sum(checkpoint_bytes(value) for value in state)
    return 0


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", keys: Sequence[str] = ()
) -> dict[str, Any]:
    """Read a checkpoint; raise CheckpointError naming the file if it is not a whole one, or
    lacks any of `keys` (EVAL_KEYS to evaluate it, RESUME_KEYS to continue its run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch explains at length how to load such files unsafely; ours never need that
        text = str(error)
        if "WeightsUnpickler error:" in text and "Unsupported global" not in text:
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: truncated or not a checkpoint ({detail[:120]})"
            ) from error
        if "Unsupported global" not in text:
            raise _unreadable(path, error) from error
        raise CheckpointError(
            f"{path}: not a resnets checkpoint: it holds objects other than tensors and plain "
            "data, which resnets never loads"
        ) from error
    except Exception as error:  # torch.load fails in many ways on a foreign or cut-off file
        raise _unreadable(path, error) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resnets checkpoint (no '{FORMAT}' marker)")
    if state.get("version") == 1:
        require_keys(state, path, ("config", "model"))
        state = upgrade_v1(state)
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {shown(state.get('version'), 20)}; this resnets reads 1 "
            f"and {VERSION}"
        )
    require_keys(state, path, keys)
    return state


# What every checkpoint holds (enough to evaluate it), and what resuming a run also needs.
EVAL_KEYS = ("config", "model", "model_name", "model_kwargs", "data_spec", "position")
RESUME_KEYS = (*EVAL_KEYS, "optimizer", "scaler", "ema", "history", "micro_batch", "rng")
# Keys whose value is a table (a dict) in every checkpoint resnets writes.
TABLES = ("config", "model", "model_kwargs", "data_spec", "position", "optimizer", "scaler", "rng")


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: truncated or not a checkpoint ({reason_of(error)})")


def reason_of(error: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes, cut short."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return text.splitlines()[0][:120] if text else type(error).__name__


def require_keys(state: dict[str, Any], path: str | Path, keys: Sequence[str]) -> None:
    """Raise CheckpointError naming the keys of `keys` that `state` lacks or holds wrongly."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a whole resnets checkpoint: it lacks {', '.join(missing)} (it was not "
            "written by resnets, or was edited); use another checkpoint"
        )
    for key in keys:
        if key in TABLES and not isinstance(state[key], dict):
            raise CheckpointError(
                f"{path}: not a whole resnets checkpoint: its {key} is a "
                f"{type(state[key]).__name__}, not a table; use another checkpoint"
            )
    if "position" in keys and not isinstance(state["position"].get("epoch"), int):
        raise CheckpointError(f"{path}: not a whole resnets checkpoint: its position has no epoch")


def saved_data_spec(state: dict[str, Any], path: str | Path) -> DataSpec:
    """The data spec a checkpoint holds; CheckpointError if it is not one."""
    try:
        return DataSpec.from_dict(state["data_spec"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not a whole resnets checkpoint: its data_spec does not load "
            f"({reason_of(error)})"
        ) from error


def check_state_dict(
    model: nn.Module, weights: Any, path: str | Path, what: str = "weights"
) -> dict[str, torch.Tensor]:
    """`weights` if they fit `model` key for key and shape for shape; otherwise CheckpointError
    naming the first keys missing or unexpected, or the first tensor whose shape differs.

    Checked before `load_state_dict`, whose own errors are a traceback listing every tensor.
    """
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(f"{path}: its {what} are not a table of tensors; use another file")
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        parts = [
            f"{label} {', '.join(keys[:SHOWN_KEYS])}{' ...' if len(keys) > SHOWN_KEYS else ''}"
            f" ({len(keys)} in all)"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise CheckpointError(
            f"{path}: its {what} are not those of the model it names: {'; '.join(parts)}; the "
            "file was edited or written by another program"
        )
    for key, tensor in expected.items():
        found = weights[key]
        if found.shape != tensor.shape:
            raise CheckpointError(
                f"{path}: its {what} are not those of the model it names: {key} is "
                f"{tuple(found.shape)} in the file but {tuple(tensor.shape)} in the model; the "
                "file was edited or written by another program"
            )
    return weights


SHOWN_KEYS = 3  # keys named in a message about missing or unexpected weights


def model_from_checkpoint(state: dict[str, Any], path: str | Path) -> tuple[nn.Module, str]:
    """The network a checkpoint names, with its weights: the averaged (EMA) ones when it holds
    them. Returns the model and which weights it has ("ema" or "model")."""
    try:
        model = create_model(state["model_name"], **state["model_kwargs"])
    except (UsageError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: its model {shown(state['model_name'], 40)} does not build: {reason_of(error)}"
        ) from error
    if state.get("ema"):
        if not isinstance(state["ema"], dict):
            raise CheckpointError(f"{path}: its averaged (EMA) weights are not a table of tensors")
        weights = check_state_dict(model, averaged_weights(state["ema"]), path, "EMA weights")
    else:
        weights = check_state_dict(model, state["model"], path)
    model.load_state_dict(weights)
    return model, "ema" if state.get("ema") else "model"


def averaged_weights(ema_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model state dict inside an AveragedModel's state dict (a checkpoint's `ema`)."""
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k.startswith("module.")}


def upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint (always Fashion-MNIST, 1 channel, 10 classes) as version 2."""
    config = state["config"]
    kwargs = {
        "in_channels": 1, "num_classes": 10, "small_input": config.get("small_input", False),
        "width": config.get("width", 1.0),
        "zero_init_residual": config.get("zero_init_residual", False),
    }  # fmt: skip
    history = [{"val_loss": None, "val_acc": None, **row} for row in state.get("history", [])]
    return {
        **state, "version": VERSION, "model_name": config["model"], "model_kwargs": kwargs,
        "data_spec": FASHION_MNIST.spec.to_dict(), "history": history,
    }  # fmt: skip


def find_checkpoint(path: str | Path, prefer: str = "last", fallback: str | None = None) -> Path:
    """A checkpoint file itself, or `checkpoints/{prefer}.pt` inside a run folder (else
    `checkpoints/{fallback}.pt`, when given)."""
    path = Path(path)
    if path.is_dir():
        names = (prefer,) if fallback is None else (prefer, fallback)
        for name in names:
            candidate = path / "checkpoints" / f"{name}.pt"
            if candidate.is_file():
                return candidate
        wanted = " or ".join(f"checkpoints/{name}.pt" for name in names)
        raise CheckpointError(f"{path}: no {wanted} in this run folder")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (`RUN/checkpoints/x.pt` -> `RUN`)."""
    return (
        checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    )
