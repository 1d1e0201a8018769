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

gluonseg's extensions (hyperparameters `class_weights` and `loss`; the default is exactly the above):
- class weights w: CE_n = sum of w[label] * -log p(label) / sum of w[label] over the sample's labelled
  pixels: the weighted mean of torch.nn.CrossEntropyLoss(weight=w), so scaling every weight changes nothing;
- ohem (online hard example mining, as Wu et al. 2016 and the PSPNet/OCNet/MMSegmentation `OHEMPixelSampler`):
  of each sample's labelled pixels only the hard ones count: those whose softmax probability of the true
  class is below OHEM_THRESHOLD, and at least the OHEM_MIN_KEPT_FRACTION of them with the lowest probability
  (ties included). The selection is made on the values, without a gradient; the kept pixels are then
  averaged as above (weighted when class weights are set too). Each head selects its own pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mxnet import gluon, nd

# Literature constants: MMSegmentation's OHEMPixelSampler and the PSPNet/OCNet Cityscapes recipes keep pixels
# below probability 0.7 and at least 100,000 per batch of 8 crops of 512x1024 (about 1/42 of them): here a
# fraction of each sample's labelled pixels, so the floor means the same at any crop size.
OHEM_THRESHOLD = 0.7
OHEM_MIN_KEPT_FRACTION = 1 / 40


def _check_shapes(logits: nd.NDArray, label: nd.NDArray) -> None:
    if logits.ndim != 4 or label.shape != (logits.shape[0],) + logits.shape[2:]:
        raise ValueError(f"logits {logits.shape} and label {label.shape} do not match as (N,C,H,W) and (N,H,W)")


def pixel_cross_entropy(logits: nd.NDArray, label: nd.NDArray, ignore_label: int = 255) -> nd.NDArray:
    """Mean cross-entropy over each sample's labelled pixels: logits (N,C,H,W), label (N,H,W) -> (N,)."""
    _check_shapes(logits, label)
    label = label.astype(logits.dtype)
    valid = label != ignore_label
    # Ignored pixels pick class 0 and are then multiplied by 0: no value and no gradient from them.
    safe_label = label * valid
    nll = -nd.pick(nd.log_softmax(logits, axis=1), safe_label, axis=1) * valid
    count = valid.sum(axis=(1, 2))
    return nll.sum(axis=(1, 2)) / nd.maximum(count, 1)


def _true_class_terms(logits: nd.NDArray, label: nd.NDArray, ignore_label: int):
    """(-log p(label), p(label), valid, safe label) per pixel, each (N,H,W); 0 where ignored."""
    _check_shapes(logits, label)
    label = label.astype(logits.dtype)
    valid = label != ignore_label
    safe_label = label * valid
    log_p = nd.pick(nd.log_softmax(logits, axis=1), safe_label, axis=1)
    return -log_p * valid, nd.exp(log_p.detach()) * valid, valid, safe_label


def ohem_keep(prob: nd.NDArray, valid: nd.NDArray, threshold: float, min_kept_fraction: float) -> nd.NDArray:
    """Which pixels OHEM keeps, (N,H,W) of 0/1, from the true-class probability and the labelled-pixel mask.

    Per sample: probability < threshold, or among the ceil(fraction x labelled) lowest (ties included).
    """
    n = prob.shape[0]
    flat = nd.where(valid, prob, nd.ones_like(prob) * 2.0).reshape((n, -1))  # ignored pixels sort last
    count = valid.reshape((n, -1)).sum(axis=1)
    kth = nd.maximum(nd.ceil(count * min_kept_fraction), 1) - 1
    kth_value = nd.pick(nd.sort(flat, axis=1), kth, axis=1).reshape((n, 1, 1))
    return ((prob < threshold) + (prob <= kth_value) > 0) * valid


def weighted_pixel_loss(
    logits: nd.NDArray,
    label: nd.NDArray,
    class_weights: nd.NDArray | None = None,
    ohem: bool = False,
    ignore_label: int = 255,
) -> nd.NDArray:
    """Per-sample loss (N,) with class weights (a (C,) array) and/or OHEM; see the module docstring."""
    nll, prob, valid, safe_label = _true_class_terms(logits, label, ignore_label)
    weight = valid
    if ohem:
        weight = ohem_keep(prob, valid, OHEM_THRESHOLD, OHEM_MIN_KEPT_FRACTION)
    if class_weights is not None:
        weight = weight * nd.take(class_weights.as_in_context(logits.context), safe_label)
    weight = weight.detach()
    total = weight.sum(axis=(1, 2))
    # A sample whose kept weights sum to 0 (nothing labelled, or only zero-weight classes) contributes 0.
    return (nll * weight).sum(axis=(1, 2)) / nd.where(total > 0, total, nd.ones_like(total))


class SegmentationLoss(gluon.Block):
    """`loss(outputs, label) -> (N,)` where outputs is `(main, aux)`, `(main,)` or a bare `main`.

    Runs imperatively (training is not hybridized, as in GluonCV's own training script).

    class_weights: one non-negative number per class, or None; ohem: online hard-pixel mining. Without
    either the loss is `pixel_cross_entropy`, the built-in's.
    """

    def __init__(
        self,
        aux_weight: float = 0.5,
        ignore_label: int = 255,
        class_weights: Sequence[float] | None = None,
        ohem: bool = False,
    ) -> None:
        super().__init__()
        self.aux_weight = float(aux_weight)
        self.ignore_label = int(ignore_label)
        if class_weights is not None and not all(math.isfinite(w) and w >= 0 for w in class_weights):
            raise ValueError(f"class weights must be finite and non-negative, got {list(class_weights)}")
        self.class_weights = None if class_weights is None else nd.array(class_weights, dtype="float32")
        self.ohem = bool(ohem)

    def _one_head(self, logits: nd.NDArray, label: nd.NDArray) -> nd.NDArray:
        if self.class_weights is None and not self.ohem:
            return pixel_cross_entropy(logits, label, self.ignore_label)
        return weighted_pixel_loss(logits, label, self.class_weights, self.ohem, self.ignore_label)

    def forward(self, outputs, label: nd.NDArray) -> nd.NDArray:
        heads = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
        loss = self._one_head(heads[0], label)
        if len(heads) > 1:
            # Computed even at weight 0: a head left out of the graph gets stale gradients, which
            # gluon.Trainer.step refuses.
            loss = loss + self.aux_weight * self._one_head(heads[1], label)
        return loss
