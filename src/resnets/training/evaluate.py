"""Evaluation of a split: loss, accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from resnets.ood import energy
from resnets.training import distributed
from resnets.training.calibration import BINS, calibration_sums, ece_of
from resnets.training.memory import MemoryFallback
from resnets.training.runtime import autocast, release_freed_host_memory


def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, tta: bool
) -> torch.Tensor:
    """Float32 logits; with `tta`, the mean of the logits of the image and its mirror image."""
    return predict_both(model, x, device, precision, tta)[0]


def predict_both(
    model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, tta: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits as `predict` gives them, the image's own logits without the mirror image)."""
    with autocast(device, precision):
        plain = model(x).float()
        logits = (plain + model(x.flip(-1)).float()) / 2 if tta else plain
    return logits, plain


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    precision: str = "fp32",
    tta: bool = False,
    num_classes: int,
    fallback: MemoryFallback | None = None,
    progress: bool = False,
    total: int | None = None,
    desc: str = "eval",
    keep_predictions: bool = False,
    keep_energy: bool = False,
    sharded: bool = False,
    compare_tta: bool = False,
) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and the confusion matrix (rows: true class, cols: predicted).

    A batch that does not fit in memory is split (and the split remembered) rather than failing.
    With `progress`, a progress bar (`total` batches, labelled `desc`) shows on a terminal and
    is cleared at the end. With `keep_predictions`, the result also holds each image's
    "predicted" class and its softmax probability, "confidence" (CPU tensors, in batch order).
    The result's "ece" is the expected calibration error (see calibration.py) and
    "calibration" its per-bin sums (3 lists: images, confidence, correct). With
    `keep_energy`, "energy" holds each image's energy score (resnets.ood; of the image alone,
    without test-time mirroring, as `Classifier.predict` sees it).
    With `compare_tta`, it also holds "acc_plain" and "acc_tta": the accuracy on the images as
    they are and averaged with their mirror images, from the same two forward passes that
    flip TTA runs anyway (the other figures still follow `tta`).
    """
    was_training = model.training
    model.eval()
    if device.type == "cpu":  # start from live memory, not training's heap (see plan.py)
        release_freed_host_memory()
    fallback = fallback or MemoryFallback()
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    bins = torch.zeros(3, BINS, device=device)
    predicted: list[torch.Tensor] = []
    confidence: list[torch.Tensor] = []
    both_correct = torch.zeros(2, dtype=torch.long, device=device)  # (plain, TTA)
    energies: list[torch.Tensor] = []

    def run(
        x: torch.Tensor, y: torch.Tensor, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mirror = tta or compare_tta
        pairs = [predict_both(model, part, device, precision, mirror) for part in x.split(chunk)]
        averaged, plain = torch.cat([pair[0] for pair in pairs]), torch.cat([p[1] for p in pairs])
        logits = averaged if tta else plain
        counts = None
        if compare_tta:
            counts = torch.stack([(plain.argmax(1) == y).sum(), (averaged.argmax(1) == y).sum()])
        loss = F.cross_entropy(logits, y, reduction="sum")
        top = logits.softmax(1).amax(1)
        return loss, y * num_classes + logits.argmax(1), top, energy(plain), counts

    bar = tqdm(
        batches, total=total, desc=desc, unit="batch", leave=False,
        disable=None if progress else True,
    )  # fmt: skip
    for x, y in bar:
        if len(y) == 0:  # a process's share of a last batch smaller than the world
            continue
        loss, cells, top, scores, counts = fallback.run(len(x), partial(run, x, y), "eval batch")
        loss_sum += loss
        if counts is not None:
            both_correct += counts
        confusion += torch.bincount(cells, minlength=num_classes * num_classes)
        bins += calibration_sums(top, cells % num_classes == y)
        if keep_predictions:
            predicted.append((cells % num_classes).cpu())
            confidence.append(top.cpu())
        if keep_energy:
            energies.append(scores.cpu())
    model.train(was_training)
    if device.type == "cpu":  # and training, or a checkpoint's writing, starts from it too
        release_freed_host_memory()
    if sharded:
        if keep_predictions or keep_energy:
            raise ValueError("predictions are kept only when one process evaluates the split")
        distributed.all_reduce_sum(loss_sum)
        distributed.all_reduce_sum(confusion)
        if compare_tta:
            distributed.all_reduce_sum(both_correct)
        distributed.all_reduce_sum(bins)
    matrix = confusion.view(num_classes, num_classes).cpu()
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("evaluation saw no images")
    # in float64: float32's 0.89 is 0.8899999856948853 in JSON
    per_class = matrix.diagonal().double() / matrix.sum(1).clamp(min=1).double()
    result = {
        "loss": float(loss_sum) / total,
        "acc": float(matrix.diagonal().sum()) / total,
        "per_class": per_class.tolist(),
        "confusion": matrix.tolist(),
        "images": total,
        "ece": ece_of(bins),
        "calibration": bins.cpu().tolist(),
    }
    if compare_tta:
        plain, averaged = both_correct.tolist()
        result["acc_plain"], result["acc_tta"] = plain / total, averaged / total
    if keep_predictions:
        result["predicted"] = torch.cat(predicted)
        result["confidence"] = torch.cat(confidence)
    if keep_energy:
        result["energy"] = torch.cat(energies)
    return result
