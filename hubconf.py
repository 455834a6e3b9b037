"""torch.hub entry points: `torch.hub.load("path/to/resnets", "resnet50", source="local",
num_classes=10)` builds `resnets.create_model("resnet50", num_classes=10)`.

One entry per name in `resnets.list_models()`; every keyword of `create_model` is accepted
(`in_channels`/`in_chans`, `small_input`, `width`, `pretrained=PATH_OR_URL`, ...). torch.hub
runs this file from the repository folder; `src/` is put first on the path, so that this
checkout's resnets is the one used, whether or not a copy is installed.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

# This checkout's own code first, even where another copy of resnets is installed; an already
# imported resnets (the caller's) is used as it is.
_SRC = Path(__file__).resolve().parent / "src"
if (_SRC / "resnets").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

import resnets  # noqa: E402

dependencies = ["torch"]

for _name in resnets.list_models():
    _entry = partial(resnets.create_model, _name)
    _entry.__doc__ = f"resnets.create_model({_name!r}, **kwargs)"
    globals()[_name] = _entry
del _name, _entry
