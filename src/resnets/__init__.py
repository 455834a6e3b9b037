"""resnets: exact residual networks, and a trainer that never dies of memory.

`resnets.create_model("resnet50")` and `resnets.resnet50()` are the same thing: every name in
`resnets.list_models()` has a shortcut function here.

`resnets.Classifier.from_checkpoint("runs/x").predict(["a.png"])` classifies images with a
trained network (imported on first use: it needs Pillow and the data code).
"""

from functools import partial
from typing import Any

from resnets.models import (
    MODEL_SPECS,
    BasicBlock,
    Bottleneck,
    PreActBlock,
    PreActBottleneck,
    ResNet,
    list_models,
)
from resnets.pretrained import LoadReport, create_model, load_pretrained

__version__ = "0.1.0"

# One shortcut per named model, e.g. resnets.resnet18(num_classes=10).
for _name in MODEL_SPECS:
    globals()[_name] = partial(create_model, _name)
del _name


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Prediction"):
        from resnets import predict  # noqa: PLC0415 (lazily: only prediction needs it)

        return getattr(predict, name)
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")


__all__ = [
    "BasicBlock",
    "Classifier",
    "Prediction",
    "Bottleneck",
    "LoadReport",
    "PreActBlock",
    "PreActBottleneck",
    "ResNet",
    "create_model",
    "list_models",
    "load_pretrained",
    *MODEL_SPECS,
]
