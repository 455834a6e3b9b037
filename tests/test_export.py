"""`resnets export`: ONNX, safetensors and .pt2 files that compute what the PyTorch network
computes, on any batch size; never over a file that is not ours; one line per failure."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import pytest
import torch
from test_end_to_end import flags

from resnets import export
from resnets.cli import main
from resnets.data import FASHION_MNIST
from resnets.data.spec import DataSpec
from resnets.export import export_network
from resnets.models import create_model
from resnets.models.conv import Conv2d
from resnets.weights import TrainedNetwork, load_network, save_safetensors

from helpers import TINY, synthetic_dataset, write_dataset

RGB = DataSpec(
    name="rgb-shapes", classes=("circle", "square", "star", "cross", "ring"), channels=3,
    size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
)  # fmt: skip
SPECS = {1: FASHION_MNIST.spec, 3: RGB}


def tiny_network(channels: int, image_size: int = 16) -> TrainedNetwork:
    """cifar_resnet20 at width 0.25 with random BatchNorm statistics, so a BatchNorm that is
    dropped or folded wrongly changes the outputs."""
    torch.manual_seed(channels)
    spec = SPECS[channels]
    kwargs = {"width": 0.25, "in_channels": channels, "num_classes": spec.num_classes}
    model = create_model("cifar_resnet20", **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return TrainedNetwork("cifar_resnet20", kwargs, spec, image_size, model.state_dict(), Path())


def weights_file(
    tmp_path: Path, channels: int, image_size: int = 16
) -> tuple[Path, TrainedNetwork]:
    network = tiny_network(channels, image_size)
    return save_safetensors(network, tmp_path / f"net{channels}.safetensors"), network


def images(network: TrainedNetwork, batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, network.spec.channels, size, size)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize("channels", [1, 3])
def test_onnx_agrees_with_pytorch_on_any_batch(tmp_path: Path, channels: int) -> None:
    source, network = weights_file(tmp_path, channels)
    result = export_network(source, "onnx", tmp_path / "model.onnx")
    assert result.path == tmp_path / "model.onnx" and result.max_abs_diff < 1e-4
    assert result.path.stat().st_size == result.size_bytes

    proto = onnx.load(str(result.path))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [export.ONNX_OPSET]
    ops = {node.op_type for node in proto.graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops  # folded into the convolutions
    batch, c, h, w = proto.graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and (c.dim_value, h.dim_value, w.dim_value) == (channels, 16, 16)
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = network.spec
    assert json.loads(meta["classes"]) == list(spec.classes)
    assert json.loads(meta["mean"]) == list(spec.mean)
    assert json.loads(meta["std"]) == list(spec.std)
    assert (meta["model_name"], meta["image_size"]) == ("cifar_resnet20", "16")
    assert DataSpec.from_dict(json.loads(meta["data_spec"])) == spec

    # Our own session, on batch sizes the export's check did not use.
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    model = network.build()
    for n in (2, 5):
        x = images(network, n, 16)
        (logits,) = session.run(["logits"], {"images": x.numpy()})
        with torch.no_grad():
            expected = model(x)
        assert logits.shape == (n, spec.num_classes)
        assert (torch.from_numpy(logits) - expected).abs().max() < 1e-4


@pytest.mark.parametrize("channels", [1, 3])
def test_pt2_round_trip_on_two_batch_sizes(tmp_path: Path, channels: int) -> None:
    source, network = weights_file(tmp_path, channels)
    result = export_network(source, "pt2", image_size=24)
    assert result.path == tmp_path / f"net{channels}.pt2"  # beside the file it came from
    extra = {"resnets.json": ""}
    program = torch.export.load(result.path, extra_files=extra)
    meta = json.loads(extra["resnets.json"])
    assert (meta["image_size"], json.loads(meta["classes"])) == ("24", list(network.spec.classes))
    model = network.build()
    for n in (1, 4):
        x = images(network, n, 24)
        with torch.no_grad():
            assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def test_the_pooled_stem_exports_at_an_odd_side(tmp_path: Path) -> None:
    """fast's fp32 network (its stem's stride 2 taken by a ceil-mode max pool, a BatchNorm after
    the pool that cannot be folded) exports to ONNX and agrees at 29 px, where ceil mode makes
    the pool keep a last, partial window."""
    torch.manual_seed(0)
    kwargs = {"width": 0.25, "in_channels": 1, "num_classes": 10, "small_input": True,
              "stem_stride": 2, "stem_pool": True}  # fmt: skip
    model = create_model("resnet18", **kwargs)
    network = TrainedNetwork("resnet18", kwargs, FASHION_MNIST.spec, 29, model.state_dict(), Path())
    source = save_safetensors(network, tmp_path / "pooled.safetensors")
    result = export_network(source, "onnx", tmp_path / "pooled.onnx")
    assert result.max_abs_diff < 1e-4
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = images(network, 3, 29)
    (logits,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        assert (torch.from_numpy(logits) - network.build()(x)).abs().max() < 1e-4
    assert "MaxPool" in {node.op_type for node in onnx.load(str(result.path)).graph.node}


def conv_targets(program: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


def test_the_tiny_map_path_stays_out_of_the_exported_program(tmp_path: Path) -> None:
    # At 8 px cifar_resnet20's last stage has 2x2 maps: our Conv2d computes them on the CPU
    # in bf16 as a stack of shifted copies and one matrix product, which an export must not
    # keep (a bf16 copy shows the check below can see it).
    source, network = weights_file(tmp_path, 1, image_size=8)
    raw = create_model(network.model_name, **network.model_kwargs).eval()
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in raw.modules())
    assert any(type(m) is Conv2d for m in raw.modules())
    x = images(network, 2, 8)
    traced = torch.export.export(copy.deepcopy(raw).to(torch.bfloat16), (x.to(torch.bfloat16),))
    assert "aten.stack.default" in conv_targets(traced)

    program = torch.export.load(export_network(source, "pt2").path)
    targets = conv_targets(program)
    assert "aten.stack.default" not in targets
    assert sum(t in ("aten.conv2d.default", "aten.convolution.default") for t in targets) == convs
    assert targets.count("aten.linear.default") == 1  # the classifier alone


def test_safetensors_round_trip_is_exact(tmp_path: Path) -> None:
    source, network = weights_file(tmp_path, 3)
    result = export_network(source, "safetensors", tmp_path / "out" / "weights.safetensors")
    assert result.max_abs_diff == 0.0
    loaded = load_network(result.path)
    assert loaded.metadata() == network.metadata()
    assert loaded.state_dict.keys() == network.state_dict.keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in network.state_dict.items())
    x = images(network, 3, 16)
    with torch.no_grad():
        assert torch.equal(loaded.build()(x), network.build()(x))


@pytest.mark.parametrize(("fmt", "module"), [("onnx", "onnxruntime"), ("onnx", "onnx"),
                                             ("safetensors", "safetensors")])  # fmt: skip
def test_a_missing_extra_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    fmt: str, module: str,
) -> None:  # fmt: skip
    source, _ = weights_file(tmp_path, 1)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    argv = ["export", str(source), "--format", fmt, "--output", str(tmp_path / f"x.{fmt}")]
    err = one_line_error(capsys, argv, 2)
    assert module in err and "pip install 'resnets[export]'" in err
    assert not (tmp_path / f"x.{fmt}").exists()


def test_a_file_that_is_not_ours_is_kept_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = weights_file(tmp_path, 1)
    theirs = tmp_path / "theirs.pt2"
    theirs.write_bytes(b"someone's program")
    argv = ["export", str(source), "--format", "pt2", "--output", str(theirs)]
    err = one_line_error(capsys, argv, 2)
    assert f"{theirs}: exists and is not a resnets pt2 export" in err and "--force" in err
    assert theirs.read_bytes() == b"someone's program"

    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    torch.export.load(theirs)
    ours_before = theirs.stat().st_mtime_ns
    assert main(argv) == 0  # our own export is replaced without --force
    assert theirs.stat().st_mtime_ns >= ours_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net1.safetensors", "theirs.pt2"]


def test_an_export_that_disagrees_replaces_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = weights_file(tmp_path, 1)
    out = tmp_path / "model.pt2"
    assert main(["export", str(source), "--format", "pt2", "--output", str(out)]) == 0
    capsys.readouterr()
    before = out.read_bytes()
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference passes
    err = one_line_error(
        capsys, ["export", str(source), "--format", "pt2", "--output", str(out)], 1
    )
    assert "torch.export.load disagrees with PyTorch" in err and "nothing was written" in err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "net1.safetensors"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tflite"], "invalid choice: 'tflite'"),
        (["--format", "pt2", "--image-size", "0"], "expected a positive integer, not 0"),
    ],
)
def test_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    source, _ = weights_file(tmp_path, 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(source), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_bad_usage_of_ours_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, _ = weights_file(tmp_path, 1)
    err = one_line_error(
        capsys, ["export", str(source), "--format", "onnx", "--output", "model.pt2"], 2
    )
    assert "model.pt2: a --format onnx file's name must end in .onnx" in err
    missing = tmp_path / "no-such-run"
    err = one_line_error(capsys, ["export", str(missing), "--format", "pt2"], 2)
    assert str(missing) in err


def test_cli_exports_a_trained_run_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    offline_data: None,
) -> None:  # fmt: skip
    data_dir = write_dataset(tmp_path / "data", synthetic_dataset(200, 100), monkeypatch)
    settings: dict[str, Any] = {**TINY, "epochs": 1}
    run_dir = tmp_path / "run"
    assert main(["train", *flags(settings), "--data-dir", str(data_dir), "--quiet",
                 "--out", str(run_dir)]) == 0  # fmt: skip
    capsys.readouterr()

    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    out, err = capsys.readouterr()
    target = run_dir / "export" / "model.onnx"
    wrote, check = out.strip().splitlines()
    assert wrote.startswith(f"wrote {target} (") and "input (N, 1, 16, 16) float32" in wrote
    assert check.startswith("onnxruntime agrees with PyTorch: max abs difference ")
    assert check.endswith(" on batches of 1 and 3")
    assert float(check.split("difference ")[1].split()[0]) < 1e-4

    network = load_network(run_dir)
    assert network.source.name == "best.pt"
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = images(network, 2, 16)
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert (torch.from_numpy(logits) - network.build()(x)).abs().max() < 1e-4
