"""Pixel accuracy and mean IoU from a confusion matrix accumulated over the whole validation set.

SageMaker reports `validation:pixel_accuracy` and `validation:mIOU`; the built-in is GluonCV's
`SegmentationMetric` underneath (spec gluoncv-notes §2.5), so the numbers follow it:
- dataset-level sums, not a per-image average;
- pixel accuracy = correct / labelled pixels (0.0 when nothing is labelled, as GluonCV's eps gives);
- `mean_iou()` averages IoU over **all** `num_classes` classes, a class absent from both labels and
  predictions scoring 0. `mean_iou_present()` averages over the classes that occur, for reports.

Differences from GluonCV, on purpose: the ignore value is 255 (GluonCV: -1), and labels >= num_classes
or < 0 are excluded like ignore pixels (GluonCV counts labels >= num_classes as labelled-and-wrong in
pixel accuracy only). The label map turns unknown pixel values into 255 before this point, so such
labels do not occur in a normal job.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IGNORE_INDEX = 255


def _as_numpy(array: Any) -> np.ndarray:
    # MXNet NDArrays are accepted as a convenience; everything else goes through np.asarray.
    if hasattr(array, "asnumpy"):
        array = array.asnumpy()
    return np.asarray(array)


class ConfusionMatrix:
    """Accumulates an int64 (C, C) matrix: rows are ground-truth classes, columns predicted classes."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: Any, label: Any) -> None:
        """Add one batch: `pred` holds class indices (all in 0..C-1), `label` ground truth; same shape, any shape."""
        pred = _as_numpy(pred)
        label = _as_numpy(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        c = self.num_classes
        label = label.reshape(-1)
        pred = pred.reshape(-1)
        if pred.size == 0:
            return
        if pred.min() < 0 or pred.max() >= c:
            raise ValueError(f"predicted class out of range 0..{c - 1}: min {pred.min()}, max {pred.max()}")
        valid = (label >= 0) & (label < c) & (label != self.ignore_index)
        # One bincount over label*C+pred fills the whole matrix; excluded pixels go to an extra bin that is
        # dropped (much faster than boolean indexing on large batches).
        index = label.astype(np.int64) * c + pred.astype(np.int64, copy=False)
        index[~valid] = c * c
        self.matrix += np.bincount(index, minlength=c * c + 1)[: c * c].reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker) into this one; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class matrix into {self.num_classes}-class matrix")
        self.matrix += other.matrix
        return self

    add = merge

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    # -- scores

    @property
    def labelled_pixels(self) -> int:
        return int(self.matrix.sum())

    @property
    def correct_pixels(self) -> int:
        return int(np.trace(self.matrix))

    def pixel_accuracy(self) -> float:
        labelled = self.labelled_pixels
        return self.correct_pixels / labelled if labelled else 0.0

    def iou_per_class(self) -> np.ndarray:
        """IoU of each class as float64; NaN where the class is in neither labels nor predictions."""
        inter = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - np.diag(self.matrix)
        iou = np.full(self.num_classes, np.nan)
        present = union > 0
        iou[present] = inter[present] / union[present]
        return iou

    def mean_iou(self) -> float:
        """GluonCV's mIoU: mean over all classes, absent classes counting 0."""
        return float(np.nan_to_num(self.iou_per_class(), nan=0.0).mean())

    def mean_iou_present(self) -> float:
        """Mean IoU over classes present in labels or predictions; NaN if none is."""
        iou = self.iou_per_class()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    # -- persistence (JSON-friendly)

    def state_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index, "matrix": self.matrix.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ConfusionMatrix:
        cm = cls(state["num_classes"], state.get("ignore_index", IGNORE_INDEX))
        matrix = np.asarray(state["matrix"], dtype=np.int64)
        if matrix.shape != cm.matrix.shape:
            raise ValueError(f"matrix shape {matrix.shape} does not match num_classes {cm.num_classes}")
        cm.matrix[:] = matrix
        return cm

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.labelled_pixels}, "
            f"pixel_accuracy={self.pixel_accuracy():.4f}, mean_iou={self.mean_iou():.4f})"
        )
