"""The model zoo: blocks, parameter counts, torchvision compatibility, the chapter's shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnets
from resnets.data import FASHION_MNIST
from resnets.errors import UsageError
from resnets.models import MODEL_SPECS
from resnets.models.blocks import BasicBlock, Bottleneck, PadShortcut, PreActBlock, PreActBottleneck
from resnets.models.conv import SMALL_MAP, Conv2d
from resnets.models.resnet import ResNet
from resnets.summary import count_params, summarize
from resnets.training import make_config
from resnets.training.factory import model_kwargs

from helpers import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_resnet_state_dicts.json"

# torchvision's documented parameter counts (1000 classes).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# He et al. 2015, Table 6 (CIFAR-10), in millions.
CIFAR_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


def test_chapter_block_shapes() -> None:
    x = torch.rand(4, 3, 6, 6)
    assert BasicBlock(3, 3)(x).shape == (4, 3, 6, 6)
    assert BasicBlock(3, 6, stride=2)(x).shape == (4, 6, 3, 3)


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck, PreActBlock, PreActBottleneck])
def test_every_block_keeps_or_halves_shape(block: type[nn.Module]) -> None:
    x = torch.rand(2, 8, 6, 6)
    assert block(8, 8)(x).shape == (2, 8, 6, 6)
    assert block(8, 16, stride=2)(x).shape == (2, 16, 3, 3)


def test_shortcut_kinds() -> None:
    assert BasicBlock(8, 8).downsample is None
    assert BasicBlock(8, 8, shortcut="C").downsample is not None
    assert isinstance(BasicBlock(8, 16, 2, shortcut="A").downsample, PadShortcut)
    projection = BasicBlock(8, 16, 2).downsample
    assert [type(m) for m in projection] == [nn.Conv2d, nn.BatchNorm2d]


def test_option_a_shortcut_has_no_parameters_and_pads_zeros() -> None:
    shortcut = PadShortcut(4, 8, stride=2)
    assert count_params(shortcut) == 0
    x = torch.randn(2, 4, 6, 6)
    out = shortcut(x)
    assert out.shape == (2, 8, 3, 3)
    assert torch.equal(out[:, :4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 4:]) == 0
    model = resnets.cifar_resnet20()
    shortcuts = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2 and all(count_params(m) == 0 for m in shortcuts)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_bottleneck_stride_placement() -> None:
    v15 = Bottleneck(64, 256, stride=2)
    paper = Bottleneck(64, 256, stride=2, stride_on="1x1")
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert (paper.conv1.stride, paper.conv2.stride) == ((2, 2), (1, 1))
    assert paper(torch.rand(1, 64, 8, 8)).shape == (1, 256, 4, 4)


def test_preactivation_ordering() -> None:
    """BN -> ReLU -> conv: the first thing the block does is normalise its input."""
    block = PreActBlock(4, 4).eval()
    calls: list[str] = []
    for name in ("bn1", "conv1", "bn2", "conv2"):
        getattr(block, name).register_forward_hook(lambda *_, n=name: calls.append(n))
    block(torch.randn(1, 4, 5, 5))
    assert calls == ["bn1", "conv1", "bn2", "conv2"]
    # The identity path is the raw input: with the residual branch zeroed, out == x exactly,
    # negative values included (a post-activation block would have clipped them with ReLU).
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(block(x), x)


def test_preact_projection_sees_preactivated_input() -> None:
    block = PreActBlock(4, 8, stride=2).eval()
    seen: list[torch.Tensor] = []
    block.downsample.register_forward_hook(lambda _, inputs, __: seen.append(inputs[0]))
    x = torch.randn(1, 4, 6, 6)
    block(x)
    assert torch.equal(seen[0], torch.relu(block.bn1(x)))


def test_preact_network_ends_with_bn_relu() -> None:
    model = resnets.preact_resnet18()
    assert isinstance(model.norm, nn.BatchNorm2d) and isinstance(model.act, nn.ReLU)
    assert all(isinstance(b, PreActBlock) for s in model.stages() for b in s)
    assert all(
        isinstance(b, PreActBottleneck) for s in resnets.preact_resnet50().stages() for b in s
    )


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_torchvision_parameter_counts_and_state_dict(name: str) -> None:
    model = resnets.create_model(name)
    assert count_params(model) == TORCHVISION_PARAMS[name]
    expected = {key: shape for key, shape in json.loads(FIXTURE.read_text())[name]}
    actual = {key: list(t.shape) for key, t in model.state_dict().items()}
    assert actual == expected


def _reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor, bottleneck: bool):
    """torchvision's ResNet forward written out with torch.nn.functional, from a state dict."""

    def conv(key: str, t: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
        return F.conv2d(t, state[f"{key}.weight"], stride=stride, padding=padding)

    def bn(prefix: str, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5,
        )  # fmt: skip

    x = F.relu(bn("bn1", conv("conv1", x, 2, 3)))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(1, 5):
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in state:
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            shortcut = x
            if f"{p}.downsample.0.weight" in state:
                shortcut = bn(
                    f"{p}.downsample.1",
                    F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride),
                )
            if bottleneck:  # stride on the 3x3 convolution (v1.5)
                out = F.relu(bn(f"{p}.bn1", F.conv2d(x, state[f"{p}.conv1.weight"])))
                out = F.relu(
                    bn(
                        f"{p}.bn2",
                        F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1),
                    )
                )
                out = bn(f"{p}.bn3", F.conv2d(out, state[f"{p}.conv3.weight"]))
            else:
                out = F.relu(
                    bn(
                        f"{p}.bn1",
                        F.conv2d(x, state[f"{p}.conv1.weight"], stride=stride, padding=1),
                    )
                )
                out = bn(f"{p}.bn2", F.conv2d(out, state[f"{p}.conv2.weight"], padding=1))
            x = F.relu(out + shortcut)
            block += 1
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return F.linear(x, state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("name,bottleneck", [("resnet18", False), ("resnet50", True)])
def test_checkpoint_loads_strictly_and_gives_same_outputs(name: str, bottleneck: bool) -> None:
    """A checkpoint laid out as torchvision's loads with strict=True and computes the same thing."""
    torch.manual_seed(0)
    source = resnets.create_model(name)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    for key, value in state.items():  # non-trivial running statistics, as in a trained model
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    model = resnets.create_model(name)
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.eval()(x)
        reference = _reference_forward(state, x, bottleneck)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_d2l_resnet18_matches_the_chapter() -> None:
    model = resnets.d2l_resnet18()
    assert count_params(model) == 11_178_378
    assert model.conv1.bias is not None and model.layer1[0].conv1.bias is not None
    assert model.layer1[0].downsample is None  # first stage: no projection
    projection = model.layer2[0].downsample
    assert [type(m) for m in projection] == [nn.Conv2d]  # bare 1x1 conv, no BN
    assert projection[0].bias is not None
    shapes = {
        r["name"]: tuple(r["output_shape"]) for r in summarize(model, (1, 224, 224))["layers"]
    }
    assert list(shapes.items()) == [
        ("conv1", (1, 64, 112, 112)),
        ("bn1", (1, 64, 112, 112)),
        ("relu", (1, 64, 112, 112)),
        ("maxpool", (1, 64, 56, 56)),
        ("layer1", (1, 64, 56, 56)),
        ("layer2", (1, 128, 28, 28)),
        ("layer3", (1, 256, 14, 14)),
        ("layer4", (1, 512, 7, 7)),
        ("avgpool", (1, 512, 1, 1)),
        ("fc", (1, 10)),
    ]


def test_d2l_resnet18_xavier_init() -> None:
    torch.manual_seed(0)
    model = resnets.d2l_resnet18()
    conv = model.layer3[0].conv1
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound  # uniform over the whole Xavier range
    assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("depth,millions", list(CIFAR_PARAMS_M.items()))
def test_cifar_parameter_counts(depth: int, millions: float) -> None:
    model = resnets.create_model(f"cifar_resnet{depth}")
    assert round(count_params(model) / 1e6, 2 if millions < 1 else 1) == millions
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_preact_parameter_counts() -> None:
    assert round(count_params(resnets.cifar_preact_resnet110()) / 1e6, 1) == 1.7
    assert round(count_params(resnets.cifar_preact_resnet164()) / 1e6, 1) == 1.7
    # He et al. 2016 quote 10.2M for ResNet-1001, which is its convolution and classifier
    # weights; BatchNorm's affine parameters add another 0.15M.
    model = resnets.cifar_preact_resnet1001()
    bn_params = sum(count_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert round((count_params(model) - bn_params) / 1e6, 1) == 10.2
    blocks = [b for s in model.stages() for b in s]
    assert len(blocks) == 333 and all(isinstance(b, PreActBottleneck) for b in blocks)


# The deepest models: counted above, run here on 8x8 images (their forward pass at 32x32 takes
# seconds and adds nothing), and marked slow so that `-m "not slow"` leaves them out.
HEAVY = ("1202", "1001", "101", "152")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow) if name.endswith(HEAVY) else name
        for name in resnets.list_models()
    ],
)
def test_every_named_model_runs(name: str) -> None:
    model = resnets.create_model(name, num_classes=7).eval()
    side = 8 if name.endswith(HEAVY) else 32
    with torch.no_grad():
        assert model(torch.rand(1, model.in_channels, side, side)).shape == (1, 7)


def test_shortcut_functions_are_create_model() -> None:
    assert set(resnets.list_models()) <= set(dir(resnets))
    assert count_params(resnets.resnet34(num_classes=10)) == count_params(
        resnets.create_model("resnet34", num_classes=10)
    )


def test_options() -> None:
    model = resnets.resnet18(in_channels=1, num_classes=10, small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not hasattr(model, "maxpool")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    half = resnets.resnet50(width=0.5)
    assert half.layer4[-1].conv3.out_channels == 1024 and half.conv1.out_channels == 32
    zero = resnets.resnet50(zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for s in zero.stages() for b in s)
    assert torch.count_nonzero(zero.bn1.weight) == 64


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preact_resnet110"])
def test_zero_init_residual_makes_blocks_identities(name: str) -> None:
    model = resnets.create_model(name, zero_init_residual=True).eval()
    block = model.layer2[1]
    x = torch.randn(1, 32, 8, 8)
    expected = torch.relu(x) if name == "cifar_resnet20" else x
    torch.testing.assert_close(block(x), expected)


def test_features_and_stages() -> None:
    model = resnets.resnet18().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_pooled(x)
        stages = model.forward_stages(x)
        assert features.shape == (2, 512)
        torch.testing.assert_close(model.fc(features), model(x))
    assert {k: tuple(v.shape) for k, v in stages.items()} == {
        "stem": (2, 64, 16, 16),
        "layer1": (2, 64, 16, 16),
        "layer2": (2, 128, 8, 8),
        "layer3": (2, 256, 4, 4),
        "layer4": (2, 512, 2, 2),
    }


def test_bad_names_and_options() -> None:
    with pytest.raises(UsageError, match="resnet18, resnet34"):
        resnets.create_model("resnet19")
    with pytest.raises(UsageError, match="unknown option"):
        resnets.create_model("resnet18", dropout=0.5)
    with pytest.raises(UsageError, match="bottleneck"):
        resnets.create_model("resnet18", stride_on="1x1")
    with pytest.raises(ValueError, match="shortcut"):
        resnets.create_model("resnet18", shortcut="D")


@pytest.mark.parametrize(
    "size,stride,bias", [(3, 1, False), (6, 2, True), (1, 1, True), (5, 2, False), (8, 1, True)]
)
def test_small_map_conv_matches_nn_conv2d(size: int, stride: int, bias: bool) -> None:
    """The matrix-product path for tiny maps (3x3 output or less) gives nn.Conv2d's results,
    forward and backward (run in fp32 here to compare closely; forward takes it in bf16)."""
    torch.manual_seed(0)
    ours = Conv2d(16, 24, 3, stride=stride, padding=1, bias=bias)
    plain = nn.Conv2d(16, 24, 3, stride=stride, padding=1, bias=bias)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(4, 16, size, size).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    fits = ours._as_matmul_fits(x)
    assert fits == (size <= 6), "only maps of at most 3x3 output take the matmul path"
    y = ours._forward_as_matmul(x) if fits else ours(x)
    y_plain = plain(x)
    torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *ours.parameters()], grad)
    want = torch.autograd.grad(y_plain, [x, *plain.parameters()], grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16 autocast", "bf16 input"])
@pytest.mark.parametrize("size", [3, 4])
def test_small_map_path_only_in_bf16(
    precision: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU takes the matrix-product path for a tiny map in bf16 only: in fp32 oneDNN's own
    kernels are faster (BENCHMARKS.md), and maps over SMALL_MAP pixels never take it."""
    taken: list[bool] = []
    original = Conv2d._forward_as_matmul

    def spy(self: Conv2d, x: torch.Tensor) -> torch.Tensor:
        taken.append(True)
        return original(self, x)

    monkeypatch.setattr(Conv2d, "_forward_as_matmul", spy)
    conv = Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, size, size)
    if precision == "bf16 input":
        conv, x = conv.to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        y = conv(x)
    assert y.shape == (2, 8, size, size)
    assert bool(taken) == (precision != "fp32" and size * size <= SMALL_MAP)


# ---- the small-input stem at stride 2 (the network of quick, and of fast in fp32) -------------


# one network of each block kind and stem; test_matrix checks every network's map sides
STEM_KINDS = ("resnet18", "resnet50", "preact_resnet18", "preact_resnet50", "d2l_resnet18",
              "cifar_resnet20", "cifar_preact_resnet110", "cifar_preact_resnet164")  # fmt: skip


@pytest.mark.parametrize("name", STEM_KINDS)
def test_stem_stride_2_halves_every_map_and_keeps_the_weights(name: str) -> None:
    """At stride 2 the small-input stem's maps, and so every stage's, are half the stride-1
    network's (rounded up), with the same parameters: the same state dict loads into both."""
    assert {MODEL_SPECS[n].block for n in STEM_KINDS} == {s.block for s in MODEL_SPECS.values()}
    small = MODEL_SPECS[name].stem != "cifar"
    one = resnets.create_model(name, small_input=small, width=0.0625).eval()
    two = resnets.create_model(name, small_input=small, width=0.0625, stem_stride=2).eval()
    assert two.conv1.stride == (2, 2) and one.conv1.stride == (1, 1)
    two.load_state_dict(one.state_dict())
    x = torch.rand(2, one.in_channels, 32, 32)
    with torch.no_grad():
        sides_one = [m.shape[-1] for m in one.forward_stages(x).values()]
        sides_two = [m.shape[-1] for m in two.forward_stages(x).values()]
        assert two(x).shape == one(x).shape
    assert sides_two == [(s + 1) // 2 for s in sides_one]


@pytest.mark.parametrize("name", STEM_KINDS)
def test_stem_pool_halves_as_stride_2_does_with_the_same_weights(name: str) -> None:
    """The pooled stem (fast in fp32): its conv at stride 1, then the 2x2 max pool, then its
    BN-ReLU where it has one; every map the size of the stride-2 stem's at odd and even sides
    (ceil mode), and the stride-2 network's state dict loads as it is."""
    small = MODEL_SPECS[name].stem != "cifar"
    two = resnets.create_model(name, small_input=small, width=0.0625, stem_stride=2).eval()
    pooled = resnets.create_model(
        name, small_input=small, width=0.0625, stem_stride=2, stem_pool=True
    ).eval()
    assert pooled.conv1.stride == (1, 1) and two.conv1.stride == (2, 2)
    pooled.load_state_dict(two.state_dict())
    for side in (15, 16, 28, 29):
        x = torch.rand(2, pooled.in_channels, side, side)
        with torch.no_grad():
            sides = [m.shape[-1] for m in pooled.forward_stages(x).values()]
            assert sides == [m.shape[-1] for m in two.forward_stages(x).values()]
            by_hand = F.max_pool2d(pooled.conv1(x), 2, 2, ceil_mode=True)
            if hasattr(pooled, "bn1"):
                by_hand = pooled.relu(pooled.bn1(by_hand))
            assert torch.equal(pooled.stem(x), by_hand)
            # the two stems differ; compared at the stem, since the logits of the deepest
            # networks at this width can come out alike for every input (pytest-xdist's order
            # of tests drew such an initialisation for cifar_preact_resnet110)
            assert not torch.allclose(pooled.stem(x), two.stem(x))


def test_stem_pool_is_refused_without_stride_2() -> None:
    with pytest.raises(UsageError, match="stem_pool takes .* add --stem-stride 2"):
        resnets.create_model("resnet18", small_input=True, stem_pool=True)
    with pytest.raises(UsageError, match="stem_pool must be true or false"):
        resnets.create_model("resnet18", small_input=True, stem_stride=2, stem_pool=1)
    with pytest.raises(UsageError, match="add --stem-stride 2"):
        make_config(overrides={"model": "cifar_resnet20", "stem_pool": True})
    with pytest.raises(ValueError, match="stem_pool takes the stem's stride 2"):
        ResNet("basic", (1,), (8,), stem="cifar", stem_pool=True)


def test_stem_pool_reaches_the_checkpoint_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = {"model": "resnet18", "small_input": True, "stem_stride": 2, "stem_pool": True}
    kwargs = model_kwargs(make_config(overrides=overrides), FASHION_MNIST.spec)
    assert (kwargs["stem_stride"], kwargs["stem_pool"]) == (2, True)
    del overrides["stem_pool"]
    assert "stem_pool" not in model_kwargs(make_config(overrides=overrides), FASHION_MNIST.spec)
    code, out, err = run_cli(capsys, "summary", "resnet18", "--small-input", "--stem-stride",
                             "2", "--stem-pool", "--image-size", "29", "--json")  # fmt: skip
    assert code == 0, err
    layers = {row["name"]: row["output_shape"][-1] for row in json.loads(out)["layers"]}
    assert (layers["conv1"], layers["stem_pool"], layers["bn1"]) == (29, 15, 15)


def test_stem_stride_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(UsageError, match="ImageNet stem .* add --small-input"):
        resnets.create_model("resnet18", stem_stride=2)
    for bad in (0, 3, True, 2.0):
        with pytest.raises(UsageError, match="stem_stride must be 1 or 2"):
            resnets.create_model("resnet18", small_input=True, stem_stride=bad)
    with pytest.raises(UsageError, match="add --small-input"):
        make_config(overrides={"model": "resnet18", "stem_stride": 2})
    with pytest.raises(UsageError, match="stem_stride must be 1 or 2"):
        make_config(overrides={"model": "cifar_resnet20", "stem_stride": 4})
    config = make_config(overrides={"model": "cifar_resnet20", "stem_stride": 2, "image_size": 2})
    assert config.fewest_images() == 2  # 2px -> 1px at the stem -> 1x1 at the end


def test_stem_stride_reaches_the_checkpoint_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(overrides={"model": "resnet18", "small_input": True, "stem_stride": 2})
    assert model_kwargs(config, FASHION_MNIST.spec)["stem_stride"] == 2
    plain = make_config(overrides={"model": "resnet18", "small_input": True})
    assert "stem_stride" not in model_kwargs(plain, FASHION_MNIST.spec)  # as before the option
    code, out, err = run_cli(capsys, "summary", "resnet18", "--small-input", "--stem-stride",
                             "2", "--image-size", "28", "--json")  # fmt: skip
    assert code == 0, err
    layers = json.loads(out)["layers"]
    assert layers[0]["output_shape"][-1] == 14
