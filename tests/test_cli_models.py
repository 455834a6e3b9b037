"""`resnets models` and `resnets summary`: output, JSON, MACs and the errors a user sees."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torch import nn

from resnets.errors import UsageError
from resnets.summary import count_macs, summarize

from helpers import run_cli as run
from helpers import timeout


def test_resnet18_macs_match_the_paper() -> None:
    from resnets import resnet18

    # 1.8 x 10^9 in He et al. 2015, Table 1; 1.81G in torchvision's documentation.
    assert round(count_macs(resnet18(), (3, 224, 224)) / 1e9, 2) == 1.81


def test_summary_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "d2l_resnet18", "--image-size", "224")
    assert code == 0
    assert "layer4   (1, 512, 7, 7)" in out
    assert "parameters: 11,178,378" in out
    assert "MACs:       1,734,890,496" in out


def test_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "summary",
        "resnet18",
        "--input-size",
        "3",
        "224",
        "224",
        "--num-classes",
        "10",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"layers", "params", "macs"}
    assert data["layers"][-1] == {"name": "fc", "output_shape": [1, 10], "params": 5130}
    assert all(set(layer) == {"name", "output_shape", "params"} for layer in data["layers"])
    assert data["params"] == 11_689_512 - 1000 * 513 + 10 * 513
    assert 1.80e9 < data["macs"] < 1.82e9


def test_summary_depth_two_lists_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "cifar_resnet20", "--depth", "2", "--json")
    names = [layer["name"] for layer in json.loads(out)["layers"]]
    assert code == 0 and "layer3.2" in names and "layer3" in names


def test_models_lists_every_name_with_params(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and len(rows) == 20
    assert rows["resnet50"]["params"] == 25_557_032
    assert rows["d2l_resnet18"]["input_size"] == [1, 96, 96]  # the chapter's, from its spec
    assert rows["resnet18"]["input_size"] == [3, 224, 224]
    assert rows["cifar_resnet20"]["input_size"] == [3, 32, 32]


def test_summary_of_the_chapters_network_is_at_the_chapters_96px(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "summary", "d2l_resnet18", "--json")
    layers = {layer["name"]: layer["output_shape"] for layer in json.loads(out)["layers"]}
    assert code == 0 and layers["layer4"] == [1, 512, 3, 3]  # the chapter's printout


def test_models_macs_says_which_model_it_counts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models --macs` took 114 s on 2 cores without a word; off a terminal, a line per model
    on stderr (the counting itself is stubbed here: what is tested is what is said)."""
    import resnets.cli

    monkeypatch.setattr(resnets.cli, "summarize", lambda model, size: {"macs": 7})
    code, out, err = run(capsys, "models", "--macs", "--json")
    names = [row["name"] for row in json.loads(out)]
    assert code == 0 and all(row["macs"] == 7 for row in json.loads(out))
    assert err.splitlines() == [
        f"counting MACs: {name} ({n}/{len(names)})" for n, name in enumerate(names, 1)
    ]
    code, out, err = run(capsys, "models")
    assert code == 0 and err == ""  # without --macs there is nothing to wait for


def test_bad_name_lists_valid_names_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "summary", "resnet19")
    assert code == 2 and out == ""
    assert "unknown model 'resnet19'" in err and "cifar_resnet20" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_wrong_channel_count_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "summary", "resnet18", "--input-size", "1", "96", "96")
    assert code == 2
    assert err.strip() == (
        "resnets: error: the model takes 3-channel images, not 1; use --input-size 3 96 96, "
        "or build it with --in-channels"
    )


def test_non_positive_size_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "summary", "resnet18", "--input-size", "3", "0", "96")
    assert code == 2 and "positive integer" in err and "Traceback" not in err


def test_input_too_small_for_a_layer() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 5))
    with pytest.raises(UsageError, match="input size 1 3 3 does not pass through the network"):
        summarize(model, (1, 3, 3))


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resnets.cli", "summary", "resnet1"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("resnets: error: unknown model")


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`resnets models | true`: the reader is gone before anything is written; no error line,
    no traceback, and the exit status a shell gives a writer stopped by SIGPIPE."""
    command = f"{sys.executable} -m resnets.cli models | true"
    done = subprocess.run(["bash", "-c", f"{command}; echo ${{PIPESTATUS[0]}} >&2"],
                          capture_output=True, text=True, timeout=timeout(120))  # fmt: skip
    assert done.stderr.strip() == "141", done.stderr
