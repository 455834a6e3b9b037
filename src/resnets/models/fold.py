"""BatchNorm folded into the convolution before it, for inference.

In eval mode a BatchNorm is a per-channel affine map, `y = (x - mean) / sqrt(var + eps) * gamma
+ beta`. When its only input is a convolution's output it can be multiplied into that
convolution's weight and bias (PyTorch's `fuse_conv_bn_eval`), which saves one pass over the
feature map per BatchNorm at inference and changes the results only by rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from resnets.models.conv import Conv2d


class _LeafTracer(fx.Tracer):
    """A tracer that keeps resnets' Conv2d whole (its CPU tiny-map branch depends on the input,
    which symbolic tracing cannot follow)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Conv2d) or super().is_leaf_module(m, module_qualified_name)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names where the BatchNorm's input is that convolution's
    output and nothing else reads it, each module called once in `model.forward`.

    Found from the traced forward, not from attribute names, so a pair is folded only when it is
    exact by construction of the graph.
    """
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,):
            continue
        conv, norm = str(node.target), str(users[0].target)
        bn = modules[norm]
        if (
            isinstance(bn, nn.BatchNorm2d)
            and bn.running_mean is not None
            and calls[conv] == 1
            and calls[norm] == 1
        ):
            pairs.append((conv, norm))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-only copy of `model` in which each BatchNorm that directly follows a convolution
    is folded into it (the convolution gains a bias; the BatchNorm becomes `nn.Identity`).

    Folded in ResNet v1 networks: every BatchNorm (stem, both or all three convolutions of
    BasicBlock and Bottleneck, the projection shortcut's). Pre-activation blocks normalise
    *before* their convolutions: a BatchNorm whose input is a sum, a max pool's output, or a
    convolution's output that something else also reads (each block's `bn1`, the final `norm`)
    cannot be folded exactly and is left as it is; those that follow a convolution inside the
    block (`bn2`, and `bn3` of the bottleneck) are folded, and so is the first block's `bn1`
    when the stem's bare convolution feeds it alone (the CIFAR pre-activation bottleneck).

    The copy is in eval mode with gradients off: folding uses the running statistics, so
    training the copy would not train a BatchNorm network. `model` itself is not changed, and
    resnets' Conv2d stays a Conv2d (with its CPU tiny-map path).

    In float32 the logits agree to rounding (tests/test_fold.py). Under bf16 autocast the
    folded convolution rounds its BatchNorm-scaled weights to bf16 where the unfolded network
    rounds the convolution's output, so the two differ by bf16 rounding (about 1e-2 of the
    logits); measured against float64 the folded network is no less accurate. An accuracy
    evaluated in bf16 can therefore differ from the one recorded during training (which
    evaluates the unfolded network) by a few images whose top two logits nearly tie.
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, norm_name in foldable_pairs(folded):
        conv = folded.get_submodule(conv_name)
        norm = folded.get_submodule(norm_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, _BatchNorm)
        with torch.no_grad():
            fused = fuse_conv_bn_eval(conv, norm)
        _replace(folded, conv_name, fused)
        _replace(folded, norm_name, nn.Identity())
    return folded.requires_grad_(False)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
