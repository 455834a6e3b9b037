"""Residual networks: blocks, the spec table, and the builder."""

from resnets.models.blocks import BasicBlock, Bottleneck, PreActBlock, PreActBottleneck
from resnets.models.resnet import ResNet, make_stages
from resnets.models.specs import (
    MODEL_SPECS,
    ModelSpec,
    UnknownModelError,
    create_model,
    default_input_size,
    list_models,
)

__all__ = [
    "MODEL_SPECS",
    "BasicBlock",
    "Bottleneck",
    "ModelSpec",
    "PreActBlock",
    "PreActBottleneck",
    "ResNet",
    "UnknownModelError",
    "create_model",
    "default_input_size",
    "list_models",
    "make_stages",
]
