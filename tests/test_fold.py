"""Folded BatchNorm: the same logits as the unfolded eval-mode network, and training untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resnets.models import create_model, list_models
from resnets.models.conv import Conv2d
from resnets.models.fold import fold_batchnorm

# Folding changes the order of a few multiplications, so logits differ by rounding: measured
# 2e-7 to 3e-5 of the largest logit in float32 over the registry (untrained, narrow networks
# at 16 px), about what the same networks change by when their input moves by one float32
# rounding. Allowed: 1e-4 of the largest logit (or of 1, when all logits are smaller).
RELATIVE_TOLERANCE = 1e-4


def randomise_norms(model: nn.Module, size: int = 16, seed: int = 0) -> None:
    """Affine parameters drawn at random and running statistics those of a batch of random
    images (so far from the fresh (0, 1) yet not exploding in a deep network): a BatchNorm left
    out of the folded network, or folded wrongly, changes the logits."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # the running statistics become this batch's
        model.train()
        model(torch.randn(4, model.in_channels, size, size, generator=g))  # type: ignore[arg-type]
    for m in norms:
        m.momentum = 0.1


def expected_left(model: nn.Module) -> int:
    """BatchNorms that cannot be folded: none in ResNet v1 networks; in pre-activation ones the
    final one and each block's first (its input is a sum, or a max pool's output), except where
    that input is a bare stem convolution that only this BatchNorm reads (the CIFAR
    pre-activation bottleneck network: no stem BatchNorm, and a first block whose shortcut
    projects the normalised input). A pooled stem (stem_pool) leaves the BatchNorm after its max
    pool, the stem's own or the first block's."""
    pooled = hasattr(model, "stem_pool")
    if not getattr(model, "preact", False):
        return int(pooled)
    blocks = [block for stage in model.stages() for block in stage]  # type: ignore[operator]
    first_foldable = not hasattr(model, "bn1") and blocks[0].downsample is not None
    stem_left = hasattr(model, "bn1") and pooled
    return len(blocks) - int(first_foldable and not pooled) + 1 + int(stem_left)


# The deepest networks repeat the blocks of cifar_resnet110 and cifar_preact_resnet164, which
# are compared numerically; for them only what is folded is checked (their forward passes
# would take most of a minute on 2 cores, and float32 rounding in 1001 untrained layers grows
# to 1e-3 of the logits whatever computes them).
DEEPEST = {"cifar_resnet1202", "cifar_preact_resnet1001"}


# the pooled stem (its BatchNorm after a max pool) on one network of each block kind
POOLED = ("resnet18", "resnet50", "preact_resnet18", "cifar_resnet20", "cifar_preact_resnet164")


def fold_cases() -> list[object]:
    plain = [pytest.param(name, {}, id=name) for name in list_models()]
    pooled = {"stem_stride": 2, "stem_pool": True}
    return plain + [
        pytest.param(name, {**pooled, "small_input": not name.startswith("cifar")},
                     id=f"{name}-stem-pool")
        for name in POOLED
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "options"), fold_cases())
def test_folded_equals_unfolded(name: str, options: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = create_model(name, width=0.25, num_classes=7, **options)
    folded = fold_batchnorm(model)
    norms = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == expected_left(model)
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    # resnets' Conv2d (its CPU tiny-map path) stays, now with the folded bias
    assert any(type(m) is Conv2d and m.bias is not None for m in folded.modules())
    if name in DEEPEST:
        return
    randomise_norms(model)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(2, model.in_channels, 16, 16)  # type: ignore[arg-type]
    with torch.no_grad():
        want, got = model(x), folded(x)
    scale = want.abs().max().item()
    assert scale > 0 and torch.isfinite(want).all()
    assert (got - want).abs().max().item() <= RELATIVE_TOLERANCE * max(scale, 1.0)


def test_folding_changes_what_it_should() -> None:
    """Without its BatchNorms the network computes something else: the test above can fail."""
    model = create_model("cifar_resnet20", width=0.25)
    randomise_norms(model)
    model.eval()
    stripped = fold_batchnorm(model)
    for module in stripped.modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            module.bias.zero_()  # what a fold that ignored beta and the mean would give
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (stripped(x) - model(x)).abs().max() > 1e-2


def test_training_path_stays_unfolded() -> None:
    model = create_model("cifar_resnet20", width=0.25)
    randomise_norms(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fold_batchnorm(model)
    assert model.training  # the original's mode, weights and modules are as they were
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])  # BN trains
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])


def test_folding_costs_no_accuracy_in_bf16() -> None:
    """Under bf16 autocast folded and unfolded round differently; against float64 arithmetic
    the folded network is as close as the unfolded one (measured 0.94x its error here)."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", width=0.5)
    randomise_norms(model)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double()).float()
        with torch.autocast("cpu", torch.bfloat16):
            unfolded_error = (model(x).float() - exact).abs().max()
            folded_error = (folded(x).float() - exact).abs().max()
    assert 0 < folded_error <= 1.5 * unfolded_error
