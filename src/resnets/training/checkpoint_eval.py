"""`resnets eval`: a saved run's checkpoint evaluated on its data set's test split.

Apart from `evaluate` (the loop's own evaluation, a leaf module the loop imports), since it
builds data and batches with the factory, which imports the loop.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from resnets.errors import DataError
from resnets.models.fold import fold_batchnorm
from resnets.training import factory
from resnets.training.calibration import reliability
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
from resnets.training.evaluate import evaluate
from resnets.training.plan import find_budget, plan_memory
from resnets.training.plots import pick_examples
from resnets.training.recorder import RunFolder
from resnets.training.runtime import Runtime


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
