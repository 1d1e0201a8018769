"""Per-pixel softmax cross-entropy with an ignore label and a weighted auxiliary head.

Normalisation (what one sample contributes):
    loss_n = CE_main_n + aux_weight * CE_aux_n,
    CE_n   = sum over pixels of sample n whose label != ignore_label of -log softmax(logits)[label]
             / max(1, number of such pixels)
The block returns loss_n for every sample, shape (N,); `loss.backward()` then `trainer.step(N)`
averages over the batch. A sample with no labelled pixel contributes 0 and no gradient.

Why not GluonCV's `MixSoftmaxCrossEntropyLoss`: it is built on `SoftmaxOutput`, whose backward
ignores the incoming gradient, so `aux_weight` scales the printed loss but not the aux head's
gradient (both heads train with weight 1), and its gradient is divided by the labelled-pixel count
of the whole device batch before `trainer.step(N)` divides by N again. Here autograd differentiates
the value we report, so the gradient wrt logits is (softmax - onehot) * weight / valid_count_n / N.
tests/unit/test_loss.py checks both claims numerically.
"""

from __future__ import annotations

from mxnet import gluon, nd


def pixel_cross_entropy(logits: nd.NDArray, label: nd.NDArray, ignore_label: int = 255) -> nd.NDArray:
    """Mean cross-entropy over each sample's labelled pixels: logits (N,C,H,W), label (N,H,W) -> (N,)."""
    if logits.ndim != 4 or label.shape != (logits.shape[0],) + logits.shape[2:]:
        raise ValueError(f"logits {logits.shape} and label {label.shape} do not match as (N,C,H,W) and (N,H,W)")
    label = label.astype(logits.dtype)
    valid = label != ignore_label
    # Ignored pixels pick class 0 and are then multiplied by 0: no value and no gradient from them.
    safe_label = label * valid
    nll = -nd.pick(nd.log_softmax(logits, axis=1), safe_label, axis=1) * valid
    count = valid.sum(axis=(1, 2))
    return nll.sum(axis=(1, 2)) / nd.maximum(count, 1)


class SegmentationLoss(gluon.Block):
    """`loss(outputs, label) -> (N,)` where outputs is `(main, aux)`, `(main,)` or a bare `main`.

    Runs imperatively (training is not hybridized, as in GluonCV's own training script).
    """

    def __init__(self, aux_weight: float = 0.5, ignore_label: int = 255) -> None:
        super().__init__()
        self.aux_weight = float(aux_weight)
        self.ignore_label = int(ignore_label)

    def forward(self, outputs, label: nd.NDArray) -> nd.NDArray:
        heads = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
        loss = pixel_cross_entropy(heads[0], label, self.ignore_label)
        if len(heads) > 1:
            # Computed even at weight 0: a head left out of the graph gets stale gradients, which
            # gluon.Trainer.step refuses.
            loss = loss + self.aux_weight * pixel_cross_entropy(heads[1], label, self.ignore_label)
        return loss
