"""Calibration: the expected calibration error of evaluation, and eval's reliability diagram."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from resnets.training.calibration import (
    BINS,
    calibration_sums,
    ece_of,
    expected_calibration_error,
    reliability,
)
from resnets.training.evaluate import evaluate

from helpers import run_cli as cli

# Four images of three classes: (top probability, whether the top class is the true one).
# Bins of width 1/15: 0.9 and 0.92 share bin 14 (13/15, 14/15]; 0.6 is in bin 9 (8/15, 9/15];
# 0.4 in bin 6 (5/15, 6/15]. By hand:
#   bin 14: accuracy 1/2, mean confidence 0.91, gap 0.41, weight 2/4 -> 0.205
#   bin 9:  accuracy 1,   confidence 0.6,       gap 0.4,  weight 1/4 -> 0.1
#   bin 6:  accuracy 0,   confidence 0.4,       gap 0.4,  weight 1/4 -> 0.1
HAND = [(0.9, True), (0.92, False), (0.6, True), (0.4, False)]
HAND_ECE = 0.405


def hand_made() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax tops are HAND's probabilities, and labels right or wrong as HAND."""
    logits, labels = [], []
    for top, right in HAND:
        rest = (1 - top) / 2
        logits.append([math.log(top), math.log(rest), math.log(rest)])
        labels.append(0 if right else 1)
    return torch.tensor(logits), torch.tensor(labels)


class Lookup(nn.Module):
    """A 'network' whose logits for image i are row i of a table (the image holds i)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()]


def test_the_ece_of_hand_made_logits_is_the_hand_computation() -> None:
    logits, labels = hand_made()
    probabilities = logits.softmax(1)
    right = probabilities.argmax(1) == labels
    assert right.tolist() == [r for _, r in HAND]
    ece = expected_calibration_error(probabilities.amax(1), right)
    assert ece == pytest.approx(HAND_ECE, abs=1e-6)


def test_evaluation_adds_up_the_ece_over_batches() -> None:
    logits, labels = hand_made()
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
    batches = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    result = evaluate(Lookup(logits), batches, device=torch.device("cpu"), num_classes=3)
    assert result["ece"] == pytest.approx(HAND_ECE, abs=1e-6)
    rows = reliability(result["calibration"])
    assert len(rows) == BINS and sum(r["images"] for r in rows) == len(HAND)
    assert rows[13]["images"] == 2 and rows[13]["accuracy"] == 0.5
    assert rows[13]["confidence"] == pytest.approx(0.91, abs=1e-6)
    assert rows[0]["accuracy"] is None  # an empty bin


def test_a_perfectly_calibrated_bin_has_no_error() -> None:
    confidence = torch.full((10,), 0.7)
    right = torch.tensor([True] * 7 + [False] * 3)
    assert expected_calibration_error(confidence, right) == pytest.approx(0, abs=1e-6)
    assert ece_of(calibration_sums(torch.tensor([1.0]), torch.tensor([True]))) == 0
    # a confidence of exactly 1 falls in the last bin, not past it
    assert calibration_sums(torch.tensor([1.0]), torch.tensor([True]))[0, -1] == 1


def test_eval_reports_the_ece_and_draws_the_reliability_diagram(
    shapes_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (shapes_run / "calibration.png").unlink(missing_ok=True)
    code, out, err = cli(capsys, "eval", str(shapes_run), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert 0 <= result["ece"] <= 1
    assert len(result["calibration"]) == BINS
    assert sum(row["images"] for row in result["calibration"]) == result["images"]
    assert (shapes_run / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((shapes_run / "summary.json").read_text())
    assert 0 <= summary["ece"] <= 1  # of the best epoch, on the test split
