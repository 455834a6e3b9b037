"""Pictures of a run: learning curves, the confusion matrix and a grid of test images with
their predictions (matplotlib, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from resnets.files import write_atomic  # noqa: E402


def save_png(figure: Figure, path: Path, dpi: int = 120) -> None:
    """`figure` as a PNG file, written whole or not at all (its folder made), then closed."""
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=dpi)
    plt.close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, picture.getvalue())


def plot_curves(
    history: Sequence[dict[str, Any]], path: str | Path | IO[bytes], title: str = ""
) -> None:
    """Loss (left) and accuracy (right) per epoch, training, validation and test, in one PNG
    (a file name, or a binary file to write into).

    Rows whose figures are None (epochs not evaluated, or no validation split) are left out of
    those curves.
    """
    epochs = [row["epoch"] for row in history]
    tested = [row for row in history if row["test_acc"] is not None]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    loss_ax.plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "s-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    validated = [row for row in history if row.get("val_acc") is not None]
    if validated:
        loss_ax.plot([r["epoch"] for r in validated], [r["val_loss"] for r in validated], "^-",
                     label="validation")  # fmt: skip
        acc_ax.plot([r["epoch"] for r in validated], [100 * r["val_acc"] for r in validated],
                    "^-", label="validation")  # fmt: skip
    acc_ax.plot([r["epoch"] for r in tested], [100 * r["test_acc"] for r in tested], "s-",
                label="test")  # fmt: skip
    if tested:
        best = max(tested, key=lambda r: r["test_acc"])
        acc_ax.annotate(
            f"{100 * best['test_acc']:.2f}%",
            (best["epoch"], 100 * best["test_acc"]),
            textcoords="offset points", xytext=(0, -14), ha="center",
        )  # fmt: skip
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_confusion(
    matrix: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | Path | IO[bytes],
    title: str = "",
) -> None:
    """The confusion matrix with counts in each cell; rows are true classes."""
    fig, ax = plt.subplots(figsize=(8, 7), constrained_layout=True)
    ax.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            color = "white" if count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def pick_examples(
    true: Sequence[int], predicted: Sequence[int], confidence: Sequence[float], count: int = 32
) -> list[int]:
    """Up to `count` image positions to show: the mistakes, the most confident first, then
    correctly classified images in their order in the split."""
    positions = range(len(true))
    wrong = sorted(
        (i for i in positions if predicted[i] != true[i]), key=lambda i: (-confidence[i], i)
    )
    right = [i for i in positions if predicted[i] == true[i]]
    return (wrong + right)[:count]


def plot_predictions(
    images: Any,
    true: Sequence[int],
    predicted: Sequence[int],
    confidence: Sequence[float],
    classes: Sequence[str],
    path: str | Path | IO[bytes],
    title: str = "",
    columns: int = 8,
) -> None:
    """A grid of uint8 images (N, C, H, W), each titled with its predicted class and
    probability; a mistake's title is red and also names the true class."""
    count = len(images)
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.45 * columns, 1.6 * rows + 0.4), squeeze=False,
        constrained_layout=True,
    )  # fmt: skip
    for position, ax in enumerate(axes.flat):
        ax.axis("off")
        if position >= count:
            continue
        pixels = images[position]
        if pixels.shape[0] == 1:
            ax.imshow(pixels[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(pixels.transpose(1, 2, 0))
        guess, truth = classes[predicted[position]], classes[true[position]]
        label = f"{guess} {100 * confidence[position]:.0f}%"
        if guess != truth:
            ax.set_title(f"{label}\ntrue: {truth}", fontsize=7, color="red")
        else:
            ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_reliability(
    bins: Sequence[dict[str, Any]], ece: float, path: str | Path | IO[bytes], title: str = ""
) -> None:
    """A reliability diagram: each confidence bin's accuracy (bars) against the diagonal a
    calibrated network would follow, the gap shaded; below, how many images each bin holds.
    `bins` are the rows of `calibration.reliability`."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5.6), height_ratios=(3, 1), sharex=True, constrained_layout=True
    )
    lows = [row["low"] for row in bins]
    width = bins[0]["high"] - bins[0]["low"]
    filled = [row for row in bins if row["images"]]
    top.bar([r["low"] for r in filled], [r["accuracy"] for r in filled], width=width,
            align="edge", edgecolor="black", color="tab:blue", label="accuracy")  # fmt: skip
    top.bar([r["low"] for r in filled],
            [r["confidence"] - r["accuracy"] for r in filled],
            bottom=[r["accuracy"] for r in filled], width=width, align="edge",
            color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
            title=f"{title}\nexpected calibration error {100 * ece:.2f}%" if title
            else f"expected calibration error {100 * ece:.2f}%")  # fmt: skip
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lows, [row["images"] for row in bins], width=width, align="edge",
               color="gray", edgecolor="black")  # fmt: skip
    bottom.set(xlabel="confidence (top probability)", ylabel="images")
    bottom.set_yscale("symlog")
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
