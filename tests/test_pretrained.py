"""Starting from trained weights: torchvision's files and ours, fine-tuning settings, timm's
model interface and torch.hub."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_cli_train import data_dir, flags, run  # noqa: F401 (data_dir is a fixture)

import resnets
from resnets.errors import UsageError
from resnets.models import create_model
from resnets.pretrained import LoadReport, adapt_input_conv, load_pretrained
from resnets.training import TrainConfig, build_trainer, load_checkpoint, resume_trainer
from resnets.training.loop import build_optimizer
from resnets.weights import WeightsError

from helpers import TINY, synthetic_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_resnet_state_dicts.json"
REPO = Path(__file__).resolve().parent.parent
HEAVY = ("resnet101", "resnet152")


def randomised(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's state dict with every float tensor random (BN statistics included), so that a
    tensor left new or not copied cannot equal its source by chance."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for tensor in state.values():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
        else:
            tensor.fill_(7)  # num_batches_tracked
    return state


_SOURCES: dict[str, dict[str, torch.Tensor]] = {}


def torchvision_state(name: str) -> dict[str, torch.Tensor]:
    """A state dict in torchvision's layout for `name`: ours, checked against torchvision's
    keys and shapes (3 channels, 1000 classes)."""
    if name not in _SOURCES:
        state = randomised(resnets.create_model(name))
        layout = json.loads(FIXTURE.read_text())[name]
        assert [(k, list(v.shape)) for k, v in state.items()] == [(k, s) for k, s in layout]
        _SOURCES[name] = state
    return _SOURCES[name]


def conv1(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, stride=2, padding=3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
     for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")],
)  # fmt: skip
def test_torchvision_file_loads(tmp_path: Path, name: str, channels: int) -> None:
    source = torchvision_state(name)
    file = tmp_path / f"{name}.pth"
    torch.save(source, file)
    model = resnets.create_model(name, in_channels=channels, num_classes=10)
    fresh_fc = model.fc.weight.detach().clone()
    report = load_pretrained(model, file)
    state = model.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], source[key]), key
    assert len(report.loaded) == len(source) - 2 - (channels != 3)
    assert report.missing == ["fc.weight", "fc.bias"] and not report.unused
    assert torch.equal(state["fc.weight"], fresh_fc)
    x = torch.rand(2, channels, 32, 32)
    rgb = x.expand(-1, 3, -1, -1) if channels == 1 else x
    torch.testing.assert_close(conv1(x, model.conv1.weight), conv1(rgb, source["conv1.weight"]))
    if channels == 1:
        assert report.adapted == {"conv1.weight": (3, 1)}
        assert "adapted conv1.weight (3 -> 1 channels), left new fc.weight, fc.bias" in (
            report.summary()
        )
    else:
        assert report.adapted == {}


def test_more_channels_are_repeated_and_scaled() -> None:
    source = torchvision_state("resnet18")
    model = resnets.create_model("resnet18", in_channels=4, num_classes=10)
    report = load_pretrained(model, source)
    rgb = source["conv1.weight"]
    expected = torch.cat([rgb, rgb[:, :1]], dim=1) * 0.75  # R G B R, scaled by 3/4
    torch.testing.assert_close(model.conv1.weight.detach(), expected)
    assert report.adapted == {"conv1.weight": (3, 4)}


def test_six_channels_of_one_rgb_image_give_the_rgb_output() -> None:
    """The scale 3/C keeps the output's size: RGB twice over gives the RGB network's output."""
    rgb = torchvision_state("resnet18")["conv1.weight"]
    x = torch.rand(1, 3, 16, 16)
    six = adapt_input_conv(rgb, 6)
    doubled = conv1(torch.cat([x, x], dim=1), six)
    torch.testing.assert_close(doubled, conv1(x, rgb), rtol=1e-5, atol=1e-4)


def test_a_tensor_of_another_shape_is_one_line_naming_it(tmp_path: Path) -> None:
    source = dict(torchvision_state("resnet18"))
    source["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    file = tmp_path / "odd.pth"
    torch.save(source, file)
    model = resnets.resnet18(num_classes=10)
    before = model.layer2[0].conv1.weight.detach().clone()
    with pytest.raises(WeightsError) as error:
        load_pretrained(model, file, strict_shapes=True)
    message = str(error.value)
    assert "\n" not in message and error.value.exit_code == 2
    assert "layer2.0.conv1.weight is (128, 64, 1, 1) there but (128, 64, 3, 3)" in message
    assert torch.equal(model.layer2[0].conv1.weight, before)  # nothing was loaded

    report = load_pretrained(model, file)  # not strict: left new and reported
    assert report.mismatched == {"layer2.0.conv1.weight": ((128, 64, 1, 1), (128, 64, 3, 3))}
    assert "layer2.0.conv1.weight" in report.missing
    assert "layer2.0.conv1.weight (128, 64, 1, 1) there" in report.summary()
    assert torch.equal(model.layer2[0].conv1.weight, before)
    assert torch.equal(model.layer2[0].conv2.weight, source["layer2.0.conv2.weight"])


class Payload:
    """Unpickled without care, this runs code: it writes the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_crafted_pickle_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    file = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Payload(marker)}, file)
    torch.load(file, weights_only=False)  # the payload is live: loaded carelessly, it runs
    assert marker.exists()
    marker.unlink()
    with pytest.raises(WeightsError, match="other than tensors") as error:
        load_pretrained(resnets.resnet18(), file)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_unusable_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        load_pretrained(resnets.resnet18(), tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        load_pretrained(resnets.resnet18(), garbage)
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, foreign)
    with pytest.raises(WeightsError, match="none of its 1 tensors fits"):
        load_pretrained(resnets.resnet18(), foreign)


def test_a_url_is_downloaded_through_torch_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def download(url: str, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls.append((url, kwargs))
        return torchvision_state("resnet18")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    url = "https://download.example/models/resnet18-f37072fd.pth"
    model = resnets.resnet18(in_channels=1, num_classes=10)
    report = load_pretrained(model, url)
    assert calls == [(url, {"map_location": "cpu", "weights_only": True})]
    assert report.source == "resnet18-f37072fd.pth" and len(report.loaded) == 119

    def offline(url: str, **kwargs: Any) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="could not download the weights"):
        load_pretrained(model, url)


def test_our_checkpoints_and_safetensors_load(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from resnets.data import FASHION_MNIST
    from resnets.weights import TrainedNetwork, save_safetensors

    trained = resnets.create_model("resnet18", in_channels=1, num_classes=10, width=0.25)
    state = randomised(trained)
    network = TrainedNetwork("resnet18", {"in_channels": 1, "num_classes": 10, "width": 0.25},
                             FASHION_MNIST.spec, 28, state, tmp_path)  # fmt: skip
    file = save_safetensors(network, tmp_path / "net.safetensors")
    model = resnets.create_model("resnet18", in_channels=1, num_classes=10, width=0.25)
    report = load_pretrained(model, file)
    assert report.missing == [] and len(report.loaded) == len(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# ---- training from weights -----------------------------------------------------------------


@pytest.fixture
def tiny_weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Weights of TINY's network for 1-channel, 10-class data, other than the run's own start
    (another seed), with BN statistics that training in train mode would change."""
    torch.manual_seed(3)
    model = resnets.create_model(TINY["model"], width=TINY["width"], in_channels=1,
                                 num_classes=10)  # fmt: skip
    state = model.state_dict()
    for key, tensor in state.items():
        if key.endswith("running_mean"):
            tensor.uniform_(-0.1, 0.1)
        elif key.endswith("running_var"):
            tensor.uniform_(0.9, 1.1)
        elif key.endswith("num_batches_tracked"):
            tensor.fill_(7)
    torch.save(state, tmp_path / "tiny.pth")
    return tmp_path / "tiny.pth", state


def test_train_freeze_backbone_changes_only_the_classifier(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    tiny_weights: tuple[Path, dict[str, torch.Tensor]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    file, before = tiny_weights
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "train", *flags({**TINY, "epochs": 1}), "--data-dir", str(data_dir),
        "--out", str(out), "--weights", str(file), "--freeze-backbone",
    )  # fmt: skip
    assert code == 0, err
    assert f"note: loaded {len(before)} tensors from {file}" in stdout
    after = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"]  # BN running statistics included


def test_resume_does_not_reload_the_weights(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    tiny_weights: tuple[Path, dict[str, torch.Tensor]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    file, _ = tiny_weights
    out = tmp_path / "run"
    common = (*flags(TINY), "--data-dir", str(data_dir))
    code, _, err = run(capsys, "train", *common, "--epochs", "1", "--out", str(out),
                       "--weights", str(file), "--freeze-backbone")  # fmt: skip
    assert code == 0, err
    first = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    file.unlink()  # a resumed run reads its own checkpoint, not --weights
    code, stdout, err = run(capsys, "train", "--resume", str(out), "--epochs", "2")
    assert code == 0, err
    assert "loaded" not in stdout
    second = load_checkpoint(out / "checkpoints" / "last.pt")
    assert second["position"]["epoch"] == 2
    assert torch.equal(second["model"]["layer1.0.conv1.weight"], first["layer1.0.conv1.weight"])
    resumed = resume_trainer(out, quiet=True)  # still frozen: no gradients for the backbone
    trainable = [n for n, p in resumed.model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


@pytest.mark.usefixtures("offline_data")
def test_a_bad_weights_file_is_said_before_the_data_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "train", "--weights", str(tmp_path / "absent.pth"),
                       "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 2
    assert err == f"resnets: error: {tmp_path / 'absent.pth'}: no such weights file\n"


def test_train_with_weights_of_another_shape_is_exit_2(
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
    tiny_weights: tuple[Path, dict[str, torch.Tensor]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    file, _ = tiny_weights  # made for width 0.25
    code, _, err = run(
        capsys, "train", *flags({**TINY, "width": 0.5}), "--data-dir", str(data_dir),
        "--out", str(tmp_path / "run"), "--weights", str(file),
    )  # fmt: skip
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "conv1.weight is (4, 1, 3, 3) there but (8, 1, 3, 3) in this network" in err


def _names(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_lr_backbone_scales_the_backbone_groups_only(tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "lr_backbone": 0.1, "weight_decay": 5e-4}).validate()
    model = resnets.create_model(config.model, width=config.width)
    groups = build_optimizer(model, config).param_groups
    by_lr: dict[float, set[str]] = {round(g["lr"], 9): set() for g in groups}
    for group in groups:
        by_lr[round(group["lr"], 9)] |= _names(model, group["params"])
    assert set(by_lr) == {0.01, 0.1}
    assert by_lr[0.1] == {"fc.weight", "fc.bias"}
    assert by_lr[0.01] == {n for n, _ in model.named_parameters()} - by_lr[0.1]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0, 5e-4, 0]

    # the schedule keeps the factor: every step sets lr x factor on the backbone's groups
    trainer = build_trainer(dataclasses.replace(config, epochs=1), data=synthetic_dataset(100, 100),
                            run_dir=tmp_path / "run", quiet=True)  # fmt: skip
    seen: list[list[float]] = []
    trainer.on_step = lambda t, step: seen.append([g["lr"] for g in t.optimizer.param_groups])
    trainer.fit()
    assert seen and all(lrs == pytest.approx([0.01, 0.01, 0.1, 0.1]) for lrs in seen)


def test_default_groups_are_unchanged() -> None:
    """Without the fine-tuning settings the optimizer is what it always was: two groups, every
    parameter by decay, no extra keys (runs and checkpoints stay bitwise the same)."""
    config = TrainConfig(**TINY).validate()
    model = resnets.create_model(config.model, width=config.width)
    groups = build_optimizer(model, config).param_groups
    params = list(model.parameters())
    assert [g["params"] for g in groups] == [
        [p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]
    ]
    assert all("lr_scale" not in g for g in groups)


def test_freeze_backbone_and_lr_backbone_together_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="lr_backbone has no effect with freeze_backbone"):
        TrainConfig(freeze_backbone=True, lr_backbone=0.1).validate()


# ---- timm's interface, torch.hub -----------------------------------------------------------


def test_timm_interface() -> None:
    model = resnets.create_model("resnet18", in_chans=1, num_classes=10).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 2, 2)  # unpooled, as timm's
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, 512)
        torch.testing.assert_close(pooled, model.forward_pooled(x))
        torch.testing.assert_close(model.forward_head(features), model(x))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.num_classes == 5
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)
    assert model.conv1.in_channels == 1
    with pytest.raises(UsageError, match="disagree"):
        resnets.create_model("resnet18", in_chans=1, in_channels=3)
    with pytest.raises(UsageError, match="weights file or URL"):
        resnets.create_model("resnet18", pretrained=True)


def test_list_models_pattern() -> None:
    assert resnets.list_models("resnet*") == [
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"
    ]  # fmt: skip
    assert resnets.list_models("preact_resnet1?1") == ["preact_resnet101"]
    assert resnets.list_models("*preact*") == [n for n in resnets.list_models() if "preact" in n]
    assert resnets.list_models("nothing*") == []


def test_create_model_pretrained(tmp_path: Path) -> None:
    file = tmp_path / "resnet18.pth"
    torch.save(torchvision_state("resnet18"), file)
    model = resnets.create_model("resnet18", pretrained=file, in_chans=1, num_classes=10)
    assert torch.equal(model.layer4[1].bn2.running_var,
                       torchvision_state("resnet18")["layer4.1.bn2.running_var"])  # fmt: skip
    with pytest.raises(WeightsError, match="is .* there but"):
        resnets.create_model("resnet18", pretrained=file, width=0.5)


def test_pretrained_through_the_shortcuts_and_torch_hub(tmp_path: Path) -> None:
    """Weights are loaded above the model layer (resnets.pretrained.create_model), which the
    shortcut functions and hubconf.py go through; models.create_model only builds."""
    saved = resnets.create_model("cifar_resnet20", num_classes=10)
    file = tmp_path / "w.pth"
    torch.save(saved.state_dict(), file)
    for model in (
        resnets.cifar_resnet20(num_classes=10, pretrained=file),
        torch.hub.load(str(REPO), "cifar_resnet20", source="local", num_classes=10,
                       pretrained=str(file)),  # fmt: skip
    ):
        for key, tensor in saved.state_dict().items():
            assert torch.equal(model.state_dict()[key], tensor), key
    with pytest.raises(UsageError, match="pretrained"):
        create_model("cifar_resnet20", pretrained=file)


def test_torch_hub_load_builds_our_model() -> None:
    model = torch.hub.load(str(REPO), "resnet18", source="local", num_classes=7)
    assert isinstance(model, resnets.ResNet) and model.fc.out_features == 7
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_report_summary_lists_everything() -> None:
    report = LoadReport("w.pth", loaded=["a"] * 120, adapted={"conv1.weight": (3, 1)},
                        missing=["fc.weight", "fc.bias"], unused=["x"])  # fmt: skip
    assert report.summary() == (
        "loaded 120 tensors from w.pth, adapted conv1.weight (3 -> 1 channels), left new "
        "fc.weight, fc.bias, unused x"
    )
