"""Training and evaluation on Fashion-MNIST: config, loop, checkpoints, memory fallback."""

from resnets.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from resnets.training.config import RECIPES, TrainConfig, make_config
from resnets.training.evaluate import evaluate
from resnets.training.loop import (
    Diverged,
    Interrupted,
    Trainer,
    build_model,
    evaluate_checkpoint,
    learning_rate,
)
from resnets.training.memory import MemoryFallback, is_out_of_memory

__all__ = [
    "RECIPES",
    "CheckpointError",
    "Diverged",
    "Interrupted",
    "MemoryFallback",
    "TrainConfig",
    "Trainer",
    "build_model",
    "evaluate",
    "evaluate_checkpoint",
    "is_out_of_memory",
    "learning_rate",
    "load_checkpoint",
    "make_config",
    "save_checkpoint",
]
