"""Pictures for people: training curves and confusion matrices (mask overlays: gluonseg/visualize.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss, mIOU and pixel accuracy per epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    ax_score.plot(epochs, [r["mIOU"] for r in history], marker="o", label="validation mIOU")
    ax_score.plot(epochs, [r["pixel_accuracy"] for r in history], marker="s", label="validation pixel accuracy")
    ax_score.set_xlabel("epoch")
    ax_score.set_ylim(0, 1)
    ax_score.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


RARE_COLOUR = "tab:red"


def plot_confusion_matrix(
    matrix: Any,
    class_names: list[str],
    path: Path,
    title: str | None = None,
    rare: list[int] | None = None,
    rare_share: float = 0.01,
) -> None:
    """A confusion matrix (rows: ground truth, columns: prediction) as one PNG, each row scaled to sum 1.

    Row normalisation makes each row read as "where did the pixels of this class go", so rare classes
    are as visible as the background. A class with no labelled pixel keeps an all-zero row. Cells carry
    their fraction as text while the matrix is small enough to read it (up to 25 classes). `rare`: class
    ids whose labels get a `*` and RARE_COLOUR, with a note saying what rare means (under `rare_share`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float64)
    n = counts.shape[0]
    if counts.shape != (n, n) or len(class_names) != n:
        raise ValueError(f"a {counts.shape} matrix does not fit {len(class_names)} class names")
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    side = min(4 + 0.45 * n, 24)  # inches: room for the labels, capped for 255-class models
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    shown = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class's pixels")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    rare = sorted(set(rare or ()))
    labels = [f"{name} *" if i in rare else name for i, name in enumerate(class_names)]
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for i in rare:
            ticks[i].set_color(RARE_COLOUR)
            ticks[i].set_fontweight("bold")
    if rare:
        fig.text(0.01, 0.01, f"* rare: under {rare_share:.0%} of the labelled pixels", color=RARE_COLOUR, fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if n <= 25:
        for row in range(n):
            for col in range(n):
                value = fractions[row, col]
                ax.text(
                    col,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > 0.5 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
