"""The slide scale's windows: where they sit on a picture and how their overlapping logits are blended (numpy only).

The picture, at its working resolution (its own size, or resized so its long side is `slide_long_side`),
is covered by windows of `window` x `window` pixels (default: the model's crop_size), the first at 0, the
next every `stride` pixels (default 2/3 of the window, as GluonCV's MultiEvalModel) and the last flush with
the right/bottom edge, so no window hangs over the picture where it is larger than a window. Along a side
shorter than the window, the window shrinks to that side padded as the native scale pads it (a multiple of
8, at least NATIVE_MIN_SIDE): a picture that fits in one window is then exactly the native scale's input.

Blend: where windows overlap, their logits are averaged with weights that fall off towards each window's
border, where the network saw the least context (a uniform average shows the windows' seams):

    blended(y, x) = sum_k a_k(y) b_k(x) logits_k(y, x) / (sum_k a_k(y) b_k(x))

over the windows k covering (y, x), with a_k, b_k the window's weights along each axis (`axis_weights`):
a tent min(1, (t + 1) / (O + 1), (L - t) / (O + 1)) at offset t in a window side of L pixels whose overlap
with the next window is O = L - stride; all ones on an axis with a single window. Every weight is positive,
so every pixel's weights sum to a positive total, and the normalised weights a_k b_k / sum_k a_k b_k sum to 1
at every pixel. The windows form a grid, so that total is separable: (sum_i a_i(y)) (sum_j b_j(x)), two
vectors (`coverage`) rather than an array the size of the picture.

Column strips: a very wide picture is blended strip by strip (`column_strips`), each strip from the windows
that reach it (`strip_starts`): the same windows, weights and totals as a whole row, so the same values;
the windows that straddle a strip's edge run once for each side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gluonseg.inference.geometry import MULTIPLE, NATIVE_MIN_SIDE, TILE_STRIDE_RATE, native_canvas_shape


def default_window(crop_size: int) -> int:
    """The window when none is asked: crop_size (a multiple of 8 after hyperparameter parsing), at least 64."""
    return max(NATIVE_MIN_SIDE, crop_size - crop_size % MULTIPLE)


def default_stride(window: int) -> int:
    """The stride when none is asked: 2/3 of the window, as the crop scale's tiles and GluonCV's MultiEvalModel."""
    return max(1, int(window * TILE_STRIDE_RATE))


def check_window(window: int, stride: int | None = None) -> None:
    """ValueError unless the window is a multiple of 8 of at least NATIVE_MIN_SIDE and 1 <= stride <= window."""
    if window < NATIVE_MIN_SIDE or window % MULTIPLE:
        raise ValueError(
            f"the slide window must be a multiple of {MULTIPLE} of at least {NATIVE_MIN_SIDE}, got {window}"
        )
    if stride is not None and not 1 <= stride <= window:
        raise ValueError(f"the slide stride must be between 1 and the window ({window}), got {stride}")


def slide_size(height: int, width: int, long_side: int | None) -> tuple[int, int]:
    """The working resolution: the picture's own, or its long side resized to `long_side` (aspect kept, >= 1)."""
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    if long_side is None:
        return height, width
    factor = long_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def window_side(length: int, window: int) -> int:
    """The window's extent along a side of `length` pixels: the window, or the padded side when shorter."""
    padded = native_canvas_shape(length, length)[0]
    return padded if padded <= window else window


def window_starts(length: int, side: int, stride: int) -> list[int]:
    """Window offsets along one side: 0, stride, 2*stride, ... and the last flush with the end."""
    if length <= side:
        return [0]
    count = -(-(length - side) // stride) + 1
    return [min(i * stride, length - side) for i in range(count)]


def axis_weights(side: int, stride: int, count: int) -> np.ndarray:
    """A window's blend weights along one axis (module docstring), float32, all positive."""
    if count == 1:
        return np.ones(side, dtype=np.float32)
    ramp = max(1, side - stride) + 1
    t = np.arange(side, dtype=np.float64)
    return np.minimum(1.0, np.minimum(t + 1, side - t) / ramp).astype(np.float32)


def coverage(length: int, starts: list[int], weights: np.ndarray) -> np.ndarray:
    """Sum over the windows on one axis of their weights at each of the `length` pixels (float32)."""
    total = np.zeros(length, dtype=np.float32)
    for start in starts:
        end = min(start + weights.size, length)
        total[start:end] += weights[: end - start]
    return total


@dataclass(frozen=True)
class WindowPlan:
    """The windows over a `height` x `width` picture: a grid of (win_h, win_w) windows at ys x xs."""

    height: int
    width: int
    win_h: int
    win_w: int
    ys: list[int]
    xs: list[int]
    weight_y: np.ndarray  # (win_h,) a window's weights down its rows
    weight_x: np.ndarray  # (win_w,)
    total_y: np.ndarray  # (height,) coverage: the blend's denominator is total_y[y] * total_x[x]
    total_x: np.ndarray  # (width,)

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def plan_windows(height: int, width: int, window: int, stride: int | None = None) -> WindowPlan:
    """The windows covering a `height` x `width` picture (module docstring); stride defaults to 2/3 window."""
    stride = stride or default_stride(window)
    check_window(window, stride)
    win_h, win_w = window_side(height, window), window_side(width, window)
    ys, xs = window_starts(height, win_h, stride), window_starts(width, win_w, stride)
    weight_y, weight_x = axis_weights(win_h, stride, len(ys)), axis_weights(win_w, stride, len(xs))
    return WindowPlan(
        height,
        width,
        win_h,
        win_w,
        ys,
        xs,
        weight_y,
        weight_x,
        coverage(height, ys, weight_y),
        coverage(width, xs, weight_x),
    )


def column_strips(width: int, count: int) -> list[tuple[int, int]]:
    """`count` (at most `width`) consecutive column ranges [first, end) of nearly equal widths covering `width`."""
    count = max(1, min(count, width))
    edges = [round(i * width / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def strip_starts(plan: WindowPlan, first: int, end: int) -> list[int]:
    """The window offsets along x (plan.xs, in order) whose windows reach columns [first, end)."""
    return [x for x in plan.xs if x < end and x + plan.win_w > first]
