"""Pictures for people: training curves (and, later, confusion matrices and overlays)."""

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
