"""Training and evaluation: settings, the parts of a run and the factory that builds them."""

from resnets.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from resnets.training.checkpoint_eval import evaluate_checkpoint
from resnets.training.config import RECIPES, TrainConfig, make_config
from resnets.training.evaluate import evaluate
from resnets.training.factory import (
    build_batches,
    build_model,
    build_trainer,
    load_data,
    resume_trainer,
    start_trainer,
)
from resnets.training.loop import Aborted, Diverged, Interrupted, Trainer
from resnets.training.memory import MemoryFallback, is_out_of_memory
from resnets.training.recorder import RunFolder
from resnets.training.schedule import learning_rate
from resnets.training.step import train_step

__all__ = [
    "RECIPES",
    "Aborted",
    "CheckpointError",
    "Diverged",
    "Interrupted",
    "MemoryFallback",
    "RunFolder",
    "TrainConfig",
    "Trainer",
    "build_batches",
    "build_model",
    "build_trainer",
    "evaluate",
    "evaluate_checkpoint",
    "is_out_of_memory",
    "learning_rate",
    "load_checkpoint",
    "load_data",
    "make_config",
    "resume_trainer",
    "save_checkpoint",
    "start_trainer",
    "train_step",
]
