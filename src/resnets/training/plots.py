"""Pictures of a run: learning curves and the confusion matrix (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
