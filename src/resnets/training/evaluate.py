"""Evaluation of a split: loss, accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from resnets.errors import DataError
from resnets.models.fold import fold_batchnorm
from resnets.ood import energy
from resnets.training import distributed
from resnets.training.calibration import BINS, calibration_sums, ece_of, reliability
from resnets.training.checkpoint import (
    EVAL_KEYS,
    find_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    run_dir_of,
    saved_config,
    saved_data_spec,
)
from resnets.training.config import TrainConfig
from resnets.training.memory import MemoryFallback
from resnets.training.plan import find_budget, plan_memory
from resnets.training.plots import pick_examples
from resnets.training.recorder import RunFolder
from resnets.training.runtime import Runtime, autocast, release_freed_host_memory


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


def eval_config(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[Path, dict[str, Any], TrainConfig]:
    """The checkpoint file `evaluate_checkpoint` reads, its state, and the settings it would
    evaluate with (the saved ones with the changes `overrides` may make)."""
    file = find_checkpoint(path, "best", fallback="last")
    state = load_checkpoint(file, keys=EVAL_KEYS)
    allowed = ("device", "data_dir", "test_samples", "eval_batch_size", "tta", "verify")
    changes = {k: v for k, v in (overrides or {}).items() if k in allowed and v is not None}
    settings = {**state["config"], **changes, "train_samples": 1, "val_fraction": 0.0}
    return file, state, saved_config(file, settings)


def evaluate_checkpoint(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    confusion_png: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given checkpoint file) on its data set's test split.

    A run folder without `best.pt` (stopped before any epoch was evaluated) is evaluated from
    its `last.pt`; `note` then says so. `progress` shows a progress bar on a terminal.

    Builds only what evaluation needs: the model from the checkpoint's name and keyword
    arguments, with each BatchNorm folded into the convolution before it (`fold_batchnorm`:
    the same results up to rounding, in less time; in bf16 the accuracy can differ from the
    one training recorded by a few near-tie images), and the test batches. `overrides` may set
    device, data_dir, test_samples, eval_batch_size, tta and verify. Writes `confusion.png`
    and `predictions.png` (test images with their predictions, mistakes first) into the run
    folder, and `calibration.png`, the reliability diagram. Returns the metrics of `evaluate`
    as test_loss/test_acc, `per_class` by class name, `ece` (expected calibration error) and
    `calibration` (its bins), `checkpoint`, `epoch` and `weights` ("ema" or "model").
    """
    from resnets.training import factory  # noqa: PLC0415 (factory imports the loop, which imports us)

    file, state, config = eval_config(path, overrides)
    note = None
    if file.name == "last.pt" and Path(path).is_dir():
        note = (
            f"{path} has no checkpoints/best.pt (it stopped before an epoch was evaluated); "
            f"evaluating {file} instead"
        )
    spec = saved_data_spec(state, file)
    model, weights = model_from_checkpoint(state, file)
    runtime = Runtime.resolve(config.device, config.precision, config.channels_last)
    data = factory.load_data(config, quiet=True)
    # mirroring as the run decided it (--mirror may have overridden the data's own fact)
    data = replace(data, spec=replace(data.spec, mirror_ok=spec.mirror_ok))
    if data.spec.classes != spec.classes:
        raise DataError(
            f"{file} was trained on classes {', '.join(spec.classes[:5])}... but the data set "
            f"has {', '.join(data.spec.classes[:5])}...; point --data-dir at the data it was "
            "trained on"
        )
    model = fold_batchnorm(model).to(runtime.device, memory_format=runtime.memory_format)  # type: ignore[call-overload]
    test = factory.build_batches(config, replace(data, val=None), runtime, quiet=True).test
    plan = plan_memory(
        model=model, model_name=state["model_name"], model_kwargs=state["model_kwargs"],
        runtime=runtime, shape=(spec.channels, config.image_size, config.image_size),
        batch_size=None, eval_batch_size=test.batch_size, optimizer_copies=0,
        budget=find_budget(config.memory_budget, runtime.device),
    )  # fmt: skip
    test.batch_size = plan.eval_batch
    metrics = evaluate(
        model, test.epoch(0), device=runtime.device, precision=runtime.precision,
        tta=config.tta and spec.mirror_ok, num_classes=spec.num_classes,
        progress=progress, total=len(test), desc="eval test", keep_predictions=confusion_png,
    )  # fmt: skip
    result = {
        "test_loss": metrics["loss"], "test_acc": metrics["acc"],
        "per_class": dict(zip(spec.classes, metrics["per_class"], strict=True)),
        "confusion": metrics["confusion"], "images": metrics["images"],
        "checkpoint": str(file), "epoch": state["position"]["epoch"], "weights": weights,
        "dataset": spec.name, "note": note, "ece": metrics["ece"],
        "calibration": reliability(metrics["calibration"]),
    }  # fmt: skip
    if confusion_png:
        title = f"{state['model_name']} on {spec.name}: test accuracy {100 * metrics['acc']:.2f}%"
        elsewhere = "copy the run folder somewhere writable and evaluate it there"
        folder = RunFolder(run_dir_of(file), elsewhere=elsewhere)
        picture = folder.write_confusion(metrics["confusion"], spec.classes, title)
        result["confusion_png"] = str(picture)
        picture = folder.write_calibration(
            result["calibration"], metrics["ece"], f"{state['model_name']} on {spec.name} test"
        )
        result["calibration_png"] = str(picture)
        true = data.test.labels.tolist()
        predicted, confidence = metrics["predicted"].tolist(), metrics["confidence"].tolist()
        shown = pick_examples(true, predicted, confidence)
        examples = data.test.select(torch.tensor(shown, dtype=torch.long)).pixels().numpy()
        picture = folder.write_predictions(
            examples, [true[i] for i in shown], [predicted[i] for i in shown],
            [confidence[i] for i in shown], spec.classes,
            f"{state['model_name']} on {spec.name} test images: mistakes (red), most confident "
            "first",
        )  # fmt: skip
        result["predictions_png"] = str(picture)
    return result
