"""Class weights for the pixel loss (hyperparameter `class_weights`), and the class statistics of a job.

From the labelled-pixel counts of the training masks (the up-front scan's, summed over hosts; 255 excluded),
with f_c = pixels of class c / all labelled pixels:
- inverse_frequency: w_c = 1 / (K * f_c), K the number of classes present ("balanced" weights: their
  pixel-weighted mean is 1, a class of share 1/K gets 1);
- median_frequency (Eigen & Fergus 2015, as in SegNet): w_c = median(g) / g_c, where g_c = pixels of class c
  / labelled pixels of the masks that hold class c, and the median is over the classes present;
- both capped at MAX_WEIGHT, so a class of a few pixels cannot drown the others' gradient; a class absent
  from the training masks gets 0 (it has no pixel to weigh);
- a list: used as given.
The loss takes a weighted mean (gluonseg.training.loss), so only the ratios between the weights matter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gluonseg.data.channels import ClassPixels
from gluonseg.errors import ClientError

MAX_WEIGHT = 10.0
RARE_SHARE = 0.01  # a class present but under 1% of the labelled pixels is called rare (logs, evaluate's report)
FROM_COUNTS = ("inverse_frequency", "median_frequency")


def pixel_share(counts: ClassPixels) -> np.ndarray:
    """Each class's share of the labelled pixels (zeros when there are none)."""
    total = counts.pixels.sum()
    return counts.pixels / total if total > 0 else np.zeros(len(counts.pixels))


def inverse_frequency(counts: ClassPixels, cap: float = MAX_WEIGHT) -> np.ndarray:
    present = counts.pixels > 0
    share = pixel_share(counts)
    weights = np.zeros(len(share))
    weights[present] = 1.0 / (present.sum() * share[present])
    return np.minimum(weights, cap)


def median_frequency(counts: ClassPixels, cap: float = MAX_WEIGHT) -> np.ndarray:
    present = counts.pixels > 0
    freq = np.zeros(len(counts.pixels))
    freq[present] = counts.pixels[present] / counts.image_pixels[present]
    weights = np.zeros(len(freq))
    weights[present] = np.median(freq[present]) / freq[present]
    return np.minimum(weights, cap)


def resolve_weights(setting: str | tuple[float, ...], counts: ClassPixels | None) -> np.ndarray | None:
    """The weights `class_weights` asks for; None for 'none' (the plain loss)."""
    if setting == "none":
        return None
    if isinstance(setting, tuple):
        return np.asarray(setting, dtype=np.float64)
    if counts is None:
        raise ClientError(
            f"class_weights={setting} is computed from the training masks, which are scanned in File mode only; "
            "in Pipe mode give one weight per class, e.g. class_weights=1,5,5"
        )
    if counts.pixels.sum() == 0:
        raise ClientError(f"class_weights={setting}: the training masks hold no labelled pixel (all 255)")
    return inverse_frequency(counts) if setting == "inverse_frequency" else median_frequency(counts)


def class_stats(
    class_names: list[str],
    counts: ClassPixels | None,
    setting: str | tuple[float, ...],
    weights: np.ndarray | None,
    loss: str,
) -> dict[str, Any]:
    """What `class_stats.json` in the model folder holds: the training masks' per-class pixels and share,
    and the loss settings with the weights used (None: none)."""
    share = None if counts is None else pixel_share(counts)
    return {
        "class_names": list(class_names),
        "pixels": None if counts is None else [int(v) for v in counts.pixels],
        "pixel_share": None if share is None else [float(v) for v in share],
        "rare_classes": None if share is None else [i for i, v in enumerate(share) if 0 < v < RARE_SHARE],
        "rare_share": RARE_SHARE,
        "class_weights": list(setting) if isinstance(setting, tuple) else setting,
        "weights": None if weights is None else [float(v) for v in weights],
        "weight_cap": MAX_WEIGHT if setting in FROM_COUNTS else None,
        "loss": loss,
    }


def describe(stats: dict[str, Any]) -> list[str]:
    """The log lines for a job's class statistics (the same on every host of a multi-host job)."""
    lines = []
    if stats["pixel_share"] is not None:
        shares = ", ".join(f"{n} {s:.4%}" for n, s in zip(stats["class_names"], stats["pixel_share"]))
        lines.append(f"training masks, pixel share per class: {shares}")
        if stats["rare_classes"]:
            rare = ", ".join(stats["class_names"][i] for i in stats["rare_classes"])
            lines.append(f"rare classes (under {stats['rare_share']:.0%} of the labelled pixels): {rare}")
    weights = stats["weights"]
    shown = "none" if weights is None else "[" + ", ".join(f"{w:.6g}" for w in weights) + "]"
    lines.append(f"class weights ({stats['class_weights']}): {shown}; loss: {stats['loss']}")
    return lines
