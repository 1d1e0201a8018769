"""Logits at the network's resolution into the answer at the image's: resize, softmax, average, argmax (numpy only).

Memory: the resized logits are never held whole. The resize, softmax and argmax run in horizontal
bands of about BAND_ELEMENTS floats, so a mask-only prediction of a 4000x3000 picture with 21
classes needs about 35 MB, not the 1 GB the full (21, 3000, 4000) float32 array would take. Asking
for probabilities makes that (C, H, W) float32 array the answer itself, so its size is inherent
(and bounded: `check_probabilities_size`). The time grows with C x H x W (memory-bound: 2-3 s for that
picture on a 2-core CPU, under 0.1 s for a 500x375 VOC picture).

Streaming: the logits need not exist whole either. `resize_bands` takes them as consecutive bands of
rows (the slide scale's blended window rows) and keeps only the rows the next output band still reads;
`combine` turns one or more such streams (test-time augmentation: one per scale and flip) into the answer,
averaging the softmax probabilities of the streams band by band.

Exactness: the mask is the argmax of the very same band of probabilities that the probability path
returns (same code, same bands), so `predict_mask(x)` equals `predict_probabilities(x).argmax(0)` bit
for bit, ties included (argmax of logits alone could differ where softmax rounds two classes to the
same float). Under test-time augmentation, the probabilities are the average and the mask its argmax.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from gluonseg.errors import ProbabilitiesTooLarge

BAND_ELEMENTS = 1 << 20  # floats per band of resized logits: 4 MB float32 temporaries stay near the caches
# Probabilities are a (C, H, W) float32 array by nature (the answer itself): larger ones are refused.
# 256 MiB is 21 classes at 3.2 MP; the protobuf answer then takes two more copies while it is encoded.
DEFAULT_MAX_PROBABILITY_BYTES = 256 << 20


@dataclass
class Prediction:
    """A mask (H, W) uint8 and, when asked for, class probabilities (C, H, W) float32."""

    mask: np.ndarray
    probabilities: np.ndarray | None = None
    windows: int = 0  # network calls' worth of windows (slide scale; crop tiles; 1 per native pass)


def check_probabilities_size(num_classes: int, height: int, width: int, max_bytes: int) -> None:
    """ProbabilitiesTooLarge when (C, H, W) float32 probabilities would pass `max_bytes`."""
    size = 4 * num_classes * height * width
    if size > max_bytes:
        raise ProbabilitiesTooLarge(
            f"the probabilities for a {width}x{height} image with {num_classes} classes take {size} bytes "
            f"(float32), more than the {max_bytes} allowed (GLUONSEG_MAX_PROBABILITIES_MB); ask for the mask "
            "(Accept: image/png), send a smaller image, or raise the bound"
        )


def _bilinear_taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre bilinear sampling: for each output index, the two inputs and the weight of the second."""
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * (in_len / out_len) - 0.5
    src = np.clip(src, 0.0, in_len - 1)
    low = np.floor(src).astype(np.intp)
    high = np.minimum(low + 1, in_len - 1)
    return low, high, (src - low).astype(np.float32)


def band_rows(num_classes: int, width: int) -> int:
    """Output rows per band: about BAND_ELEMENTS floats."""
    return max(1, BAND_ELEMENTS // max(1, num_classes * width))


def source_columns(first: int, end: int, width: int, in_w: int) -> tuple[int, int]:
    """The input columns [a, b) that output columns [first, end) of a resize from `in_w` to `width` read."""
    if in_w == width:
        return first, end
    x0, x1, _ = _bilinear_taps(width, in_w)
    return int(x0[first]), int(x1[end - 1]) + 1


def resize_bands(
    bands: Iterable[np.ndarray],
    in_h: int,
    in_w: int,
    height: int,
    width: int,
    columns: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """Bilinear resize (half-pixel centres) of logits (C, in_h, in_w) given as consecutive bands of rows.

    Yields (C, rows, width) float32 bands of the resized logits, top to bottom, each `band_rows` rows
    (the last one shorter) whatever the input bands were: streams of the same output size then band
    alike (`combine` relies on it). Holds the input rows the next output band reads, and no more.

    `columns` (first, end): only those output columns, from bands that hold exactly the input columns they
    read (`source_columns`): a column strip of the same resize, value for value.
    """
    if (in_h, in_w) == (height, width):
        yield from _rebanded(bands, height)
        return
    y0, y1, wy = _bilinear_taps(height, in_h)
    x0, x1, wx = _bilinear_taps(width, in_w)
    if columns is not None:  # the bands start at the first input column these output columns read
        strip = slice(*columns)
        left_column = int(x0[strip][0])
        x0, x1, wx = x0[strip] - left_column, x1[strip] - left_column, wx[strip]
        width = columns[1] - columns[0]
    held: np.ndarray | None = None  # input rows [held_top, held_top + len)
    held_top = 0
    top = 0  # next output row
    rows = None
    for band in bands:
        if rows is None:
            rows = band_rows(band.shape[0], width)
        held = band if held is None else np.concatenate([held, band], axis=1)
        available = held_top + held.shape[1]
        while top < height:
            end = min(top + rows, height)
            if int(y1[end - 1]) >= available and available < in_h:
                break  # this band reads rows not given yet
            first, last = int(y0[top]) - held_top, int(y1[end - 1]) + 1 - held_top
            # Horizontal pass first, on just the input rows this band reads: when upscaling (the usual case)
            # that is several times fewer gathers than widening every output row.
            source = held[:, first:last, :]
            left, right = source[:, :, x0], source[:, :, x1]
            wide = left + (right - left) * wx
            upper, lower = wide[:, y0[top:end] - int(y0[top]), :], wide[:, y1[top:end] - int(y0[top]), :]
            yield upper + (lower - upper) * wy[top:end][None, :, None]
            top = end
        if top < height:  # drop the rows no later output band reads
            keep_from = int(y0[top]) - held_top
            if keep_from > 0:
                held = held[:, keep_from:]  # a view: the next concatenation copies what is left, once
                held_top += keep_from
    if top < height:
        raise ValueError(f"the logit bands ended at row {held_top + (0 if held is None else held.shape[1])} of {in_h}")


def _rebanded(bands: Iterable[np.ndarray], height: int) -> Iterator[np.ndarray]:
    """The same size: no resize (bilinear taps at the same size are the values themselves), only re-cut
    into `band_rows` bands (new arrays: the caller softmaxes them in place)."""
    held: np.ndarray | None = None
    done = 0
    rows = None
    for band in bands:
        rows = rows or band_rows(band.shape[0], band.shape[2])
        held = band if held is None else np.concatenate([held, band], axis=1)
        while held.shape[1] >= rows or (held.shape[1] and done + held.shape[1] == height):
            take = min(rows, held.shape[1])
            yield np.array(held[:, :take], dtype=np.float32)
            held, done = held[:, take:], done + take
    if done != height:
        raise ValueError(f"the logit bands ended at row {done} of {height}")


def combine(
    streams: list[Iterator[np.ndarray]],
    num_classes: int,
    height: int,
    width: int,
    want_probabilities: bool,
    out: Prediction | None = None,
) -> Prediction:
    """The answer from streams of resized logit bands (`resize_bands` to height x width, one per view).

    One stream: softmax and argmax band by band. Several (test-time augmentation): the average of their
    softmax probabilities, band by band, and its argmax. `out`: arrays (or views, such as a column strip of
    a larger answer) of that size to write into; new ones by default.
    """
    if out is None:
        out = Prediction(
            np.empty((height, width), dtype=np.uint8),
            np.empty((num_classes, height, width), dtype=np.float32) if want_probabilities else None,
        )
    mask, probabilities = out.mask, out.probabilities
    top = 0
    for bands in zip(*streams, strict=True):
        for band in bands:
            _softmax(band)
        scores = bands[0]
        if len(bands) > 1:
            scores = bands[0].copy()
            for band in bands[1:]:
                scores += band
            scores /= np.float32(len(bands))
        end = top + scores.shape[1]
        mask[top:end] = _argmax(scores)
        if probabilities is not None:
            probabilities[:, top:end] = scores
        top = end
    if top != height:
        raise ValueError(f"the bands covered {top} of {height} rows")
    return out


def logits_to_prediction(logits: np.ndarray, height: int, width: int, want_probabilities: bool) -> Prediction:
    """Resize logits (C, h, w) bilinearly to (height, width), softmax, argmax; in row bands to bound memory."""
    num_classes, in_h, in_w = logits.shape
    stream = resize_bands([logits], in_h, in_w, height, width)
    return combine([stream], num_classes, height, width, want_probabilities)


def _softmax(scores: np.ndarray) -> None:
    """Softmax over axis 0 in place.

    Class-by-class loops over contiguous (rows, W) planes: numpy's reductions over a leading axis are
    several times slower.
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


def _argmax(scores: np.ndarray) -> np.ndarray:
    """The argmax over axis 0 (first maximum, as np.argmax) as uint8, without moving the axis last (a copy)."""
    best = scores[0].copy()
    index = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best  # strict: ties keep the lower class, as np.argmax does
        index[better] = k
        np.maximum(best, scores[k], out=best)
    return index
