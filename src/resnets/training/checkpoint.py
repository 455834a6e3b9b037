"""Checkpoints that are written atomically and hold everything needed to continue bit for bit.

Version 2 also holds what a reader needs without the training code: the model's name and
keyword arguments (`create_model(state["model_name"], **state["model_kwargs"])`) and the data
spec (classes, channels, size, statistics). Version 1 files (Fashion-MNIST only) are upgraded
on loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resnets.errors import ResnetsError
from resnets.files import atomic_file

FORMAT = "resnets-checkpoint"
VERSION = 2
RECORD_BYTES = 192  # a tensor's zip entry: header, name, alignment, directory entry


class CheckpointError(ResnetsError):
    """A file that is missing, truncated, or not a resnets checkpoint."""


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; raise CheckpointError naming the file if it is not a whole one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a foreign or cut-off file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({reason[:120]})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resnets checkpoint (no '{FORMAT}' marker)")
    if state.get("version") == 1:
        state = upgrade_v1(state)
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')}; this resnets reads 1 and {VERSION}"
        )
    return state


def upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint (always Fashion-MNIST, 1 channel, 10 classes) as version 2."""
    from resnets.data.mnist import FASHION_MNIST  # noqa: PLC0415

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
