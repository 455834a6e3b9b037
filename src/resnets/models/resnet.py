"""The ResNet body: a stem, stages of residual blocks, global pooling and a classifier.

`make_stages` is a pure function from (block, blocks per stage, widths) to modules; `ResNet`
only adds the stem and the head around it. Module names match torchvision's ResNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from resnets.models.blocks import BLOCKS

Stem = Literal["imagenet", "cifar"]


def make_stages(
    block: type[nn.Module],
    layers: Sequence[int],
    widths: Sequence[int],
    in_channels: int,
    **block_options: Any,
) -> list[nn.Sequential]:
    """Stage i holds `layers[i]` blocks ending in `widths[i]` channels.

    The first block of every stage but the first halves the resolution (stride 2), as in
    Table 1 of He et al. 2015; the first stage keeps it, since the stem already reduced it.
    """
    if len(layers) != len(widths):
        raise ValueError(f"{len(layers)} stage depths but {len(widths)} stage widths")
    stages = []
    for index, (depth, width) in enumerate(zip(layers, widths, strict=True)):
        stride = 1 if index == 0 else 2
        blocks = [block(in_channels, width, stride, **block_options)]
        blocks += [block(width, width, 1, **block_options) for _ in range(depth - 1)]
        stages.append(nn.Sequential(*blocks))
        in_channels = width
    return stages


class ResNet(nn.Module):
    """A residual network; see `resnets.create_model` for the named configurations.

    Args:
        block: a key of `resnets.models.blocks.BLOCKS` ("basic", "bottleneck", "preact_basic",
            "preact_bottleneck").
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        widths: output channels of each stage.
        in_channels, num_classes: input image channels and classifier outputs.
        stem: "imagenet" (7x7 stride-2 conv, 3x3 stride-2 max pool: for 96px and up) or
            "cifar" (3x3 stride-1 conv, no pool: for 28-32px images).
        stem_width: channels produced by the stem.
        stem_stride: stride of the "cifar" stem: 1 (the usual), or 2, which halves every map
            after it and so quarters the work, for fast training on small images.
        stem_pool: take the "cifar" stem's stride 2 with a 2x2 max pool (ceil mode, so the
            maps are the same sizes) between its conv, which then runs at stride 1, and its
            BN-ReLU: the conv sees every pixel position, and the BN runs on the pooled map.
        stem_norm: BN-ReLU after the stem conv (pre-activation CIFAR networks have none; their
            first block normalises).
        bias: convolutions carry biases (the chapter's network).
        init: "kaiming" (He et al. 2015, as torchvision) or "xavier" (the chapter's).
        zero_init_residual: start each block's last BN at gamma=0, so blocks start as identities.
        block_options: passed to every block (`shortcut`, `projection_norm`, `stride_on`).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        widths: Sequence[int],
        *,
        in_channels: int = 3,
        num_classes: int = 1000,
        stem: Stem = "imagenet",
        stem_width: int = 64,
        stem_stride: int = 1,
        stem_pool: bool = False,
        stem_norm: bool = True,
        bias: bool = False,
        init: Literal["kaiming", "xavier"] = "kaiming",
        zero_init_residual: bool = False,
        **block_options: Any,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, not {block!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', not {stem!r}")
        if init not in ("kaiming", "xavier"):
            raise ValueError(f"init must be 'kaiming' or 'xavier', not {init!r}")
        if type(stem_stride) is not int or stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, not {stem_stride!r}")
        if stem_stride != 1 and stem != "cifar":
            raise ValueError("stem_stride applies to the small-input ('cifar') stem only")
        if type(stem_pool) is not bool or (stem_pool and stem_stride != 2):
            raise ValueError(f"stem_pool takes the stem's stride 2, not {stem_pool!r}")
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.preact = block.startswith("preact")
        self.num_features = widths[-1]
        self.init = init

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=bias)
        else:
            self.conv1 = nn.Conv2d(
                in_channels, stem_width, 3, stride=1 if stem_pool else stem_stride, padding=1,
                bias=bias,
            )
        if stem_pool:
            self.stem_pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        if stem_norm:
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.relu = nn.ReLU(inplace=True)
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stage_names: list[str] = []
        stages = make_stages(BLOCKS[block], layers, widths, stem_width, bias=bias, **block_options)
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)
            self.stage_names.append(f"layer{index}")
        if self.preact:
            # The pre-activation design leaves the last block's sum un-normalised.
            self.norm = nn.BatchNorm2d(widths[-1])
            self.act = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Linear | nn.Identity = nn.Linear(widths[-1], num_classes)
        self._initialise(init, zero_init_residual)

    def _initialise(self, init: str, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                if init == "xavier":
                    nn.init.xavier_uniform_(module.weight)
                elif isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                else:
                    continue  # torchvision keeps PyTorch's default for the classifier
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for stage in self.stages():
                for blk in stage:
                    nn.init.zeros_(blk.last_norm().weight)  # type: ignore[operator]

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if hasattr(self, "stem_pool"):  # pooled before the BN: a quarter of its work
            x = self.stem_pool(x)
        if hasattr(self, "bn1"):
            x = self.relu(self.bn1(x))
        if hasattr(self, "maxpool"):
            x = self.maxpool(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of the stem and of every stage, for feature extraction (`layer4` is the last)."""
        outputs = {"stem": self.stem(x)}
        x = outputs["stem"]
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, unpooled, shape (N, num_features, H/32, W/32) for the ImageNet
        stem: timm's `forward_features`. Pre-activation networks' final BN-ReLU is applied."""
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        if self.preact:
            x = self.act(self.norm(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling of a `forward_features` map, then the classifier; with
        `pre_logits` the pooled features (N, num_features) alone (timm's signature)."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features, shape (N, num_features): the classifier's input.

        (Named `forward_features` before that name took timm's meaning, the unpooled map.)
        """
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for `num_classes` outputs (initialised as the model's was);
        0 makes it an identity, so the model returns pooled features (timm's convention)."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be a whole number >= 0, not {num_classes!r}")
        device = self.fc.weight.device if isinstance(self.fc, nn.Linear) else None
        if num_classes == 0:
            self.fc = nn.Identity()
        else:
            self.fc = nn.Linear(self.num_features, num_classes, device=device)
            if self.init == "xavier":
                nn.init.xavier_uniform_(self.fc.weight)
                nn.init.zeros_(self.fc.bias)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
