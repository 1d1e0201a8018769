"""Logits at the network's resolution into the answer at the image's: resize, softmax, argmax (numpy only).

Memory: the resized logits are never held whole. The resize, softmax and argmax run in horizontal
bands of about BAND_ELEMENTS floats, so a mask-only prediction of a 4000x3000 picture with 21
classes needs about 35 MB, not the 1 GB the full (21, 3000, 4000) float32 array would take. Asking
for probabilities makes that (C, H, W) float32 array the answer itself, so its size is inherent. The
time grows with C x H x W (memory-bound: 2-3 s for that picture on a 2-core CPU, under 0.1 s for a
500x375 VOC picture).

Exactness: the mask is the argmax of the very same band of probabilities that the probability path
returns (same code, same bands), so `predict_mask(x)` equals `predict_probabilities(x).argmax(0)` bit
for bit, ties included (argmax of logits alone could differ where softmax rounds two classes to the
same float).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BAND_ELEMENTS = 1 << 20  # floats per band of resized logits: 4 MB float32 temporaries stay near the caches


@dataclass
class Prediction:
    """A mask (H, W) uint8 and, when asked for, class probabilities (C, H, W) float32."""

    mask: np.ndarray
    probabilities: np.ndarray | None = None


def _bilinear_taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre bilinear sampling: for each output index, the two inputs and the weight of the second."""
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * (in_len / out_len) - 0.5
    src = np.clip(src, 0.0, in_len - 1)
    low = np.floor(src).astype(np.intp)
    high = np.minimum(low + 1, in_len - 1)
    return low, high, (src - low).astype(np.float32)


def _band_rows(num_classes: int, width: int) -> int:
    return max(1, BAND_ELEMENTS // max(1, num_classes * width))


def logits_to_prediction(logits: np.ndarray, height: int, width: int, want_probabilities: bool) -> Prediction:
    """Resize logits (C, h, w) bilinearly to (height, width), softmax, argmax; in row bands to bound memory."""
    num_classes, in_h, in_w = logits.shape
    y0, y1, wy = _bilinear_taps(height, in_h)
    x0, x1, wx = _bilinear_taps(width, in_w)
    mask = np.empty((height, width), dtype=np.uint8)
    probabilities = np.empty((num_classes, height, width), dtype=np.float32) if want_probabilities else None
    rows = _band_rows(num_classes, width)
    for top in range(0, height, rows):
        band = slice(top, min(top + rows, height))
        # Horizontal pass first, on just the input rows this band reads: when upscaling (the usual case)
        # that is several times fewer gathers than widening every output row.
        first, last = int(y0[band][0]), int(y1[band][-1]) + 1
        source = logits[:, first:last, :]
        left, right = source[:, :, x0], source[:, :, x1]
        wide = left + (right - left) * wx
        upper, lower = wide[:, y0[band] - first, :], wide[:, y1[band] - first, :]
        resized = upper + (lower - upper) * wy[band][None, :, None]
        mask[band] = _softmax_argmax(resized)
        if probabilities is not None:
            probabilities[:, band] = resized
    return Prediction(mask, probabilities)


def _softmax_argmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 in place; returns the argmax (first maximum, as np.argmax) as uint8.

    Class-by-class loops over contiguous (rows, W) planes: numpy's reductions and argmax over a
    leading axis are several times slower (argmax copies the array to move the axis last).
    """
    top = scores[0].copy()
    for plane in scores[1:]:
        np.maximum(top, plane, out=top)
    scores -= top
    np.exp(scores, out=scores)
    total = scores[0].copy()
    for plane in scores[1:]:
        total += plane
    scores /= total
    best = scores[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best  # strict: ties keep the lower class, as np.argmax does
        index[better] = k
        np.maximum(best, scores[k], out=best)
    return index
