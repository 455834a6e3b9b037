"""Checkpoints in training: the file format (`resnets.checkpoint_format`, re-exported here) and
the saved settings read back as a TrainConfig, which needs the training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resnets.checkpoint_format import (
    EVAL_KEYS,
    FORMAT,
    RECORD_BYTES,
    RESUME_KEYS,
    SHOWN_KEYS,
    TABLES,
    VERSION,
    CheckpointError,
    averaged_weights,
    check_state_dict,
    checkpoint_bytes,
    find_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    reason_of,
    require_keys,
    run_dir_of,
    save_checkpoint,
    saved_data_spec,
    upgrade_v1,
)
from resnets.errors import UsageError
from resnets.training.config import TrainConfig, make_config

__all__ = [
    "CheckpointError",
    "EVAL_KEYS",
    "FORMAT",
    "RECORD_BYTES",
    "RESUME_KEYS",
    "SHOWN_KEYS",
    "TABLES",
    "VERSION",
    "averaged_weights",
    "check_state_dict",
    "checkpoint_bytes",
    "find_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "reason_of",
    "require_keys",
    "run_dir_of",
    "save_checkpoint",
    "saved_data_spec",
    "upgrade_v1",
    "saved_config",
]


def saved_config(path: str | Path, settings: dict[str, Any]) -> TrainConfig:
    """Settings held in checkpoint `path` (with any changes) as a validated TrainConfig; an
    error names the file (a checkpoint from another version of resnets, or edited by hand)."""
    try:
        return make_config(overrides=settings)
    except UsageError as error:
        raise CheckpointError(f"{path}: its saved settings do not load: {error}") from error
