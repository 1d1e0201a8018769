"""The Predictor: a compiled network that segments images of any size (no file I/O; see loading.py).

The method, scale by scale, is in gluonseg.inference.geometry (native, crop) and
gluonseg.inference.windows (slide); test-time augmentation's views in gluonseg.inference.tta; the resize,
softmax, averaging and argmax of the logits in gluonseg.inference.postprocess.

Memory at slide scale: the logits of the whole picture are never held. The windows are run a row of
windows at a time, their weighted logits added into one band of rows as tall as a window and as wide as
the picture (C x window x width float32); the rows no later window reaches are blended, resized,
softmaxed and argmaxed band by band into the uint8 mask, then the band moves down. Where that band would
pass SLIDE_BAND_BYTES (a very wide picture), the picture is done in column strips, each with a band as wide
as the strip (gluonseg.inference.windows), so the band's size does not grow with the picture. A worker's
memory for a picture is then its pixels (3 bytes each, plus a resized copy when the working resolution
differs), the mask (1 byte a pixel), that band and the windows in flight, not C x H x W floats.

The network is any backend's (gluonseg.inference.network):
MXNet in FP32, INT8 or BF16, or the exported ONNX model in ONNX Runtime or OpenVINO; everything around
it is the same, so every backend answers through the same geometry and post-processing.

Threads: the network serialises its own calls where it must; resizing and post-processing of
concurrent requests run in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluonseg.data.transforms import normalize
from gluonseg.inference.geometry import (
    DEFAULT_SCALE,
    NATIVE_MAX_PIXELS,
    SCALES,
    check_image,
    native_canvas,
    network_canvas,
    resize_picture,
    resized_size,
    tile_starts,
)
from gluonseg.inference.network import MXNetNetwork, Network
from gluonseg.inference.postprocess import (
    DEFAULT_MAX_PROBABILITY_BYTES,
    Prediction,
    band_rows,
    check_probabilities_size,
    combine,
    resize_bands,
    source_columns,
)
from gluonseg.inference.tta import NO_TTA, TTA
from gluonseg.inference.windows import (
    WindowPlan,
    check_window,
    column_strips,
    default_window,
    plan_windows,
    slide_size,
    strip_starts,
)
from gluonseg.palette import class_names as default_names
from gluonseg.palette import voc_palette


class Predictor:
    """A network that segments images of any size (gluonseg.inference.geometry describes how)."""

    def __init__(
        self,
        network: Network,
        num_classes: int,
        crop_size: int,
        class_names: list[str] | None = None,
        palette: list[int] | None = None,
        algorithm: str | None = None,
        scale: str = DEFAULT_SCALE,
        native_max_pixels: int = NATIVE_MAX_PIXELS,
        slide_long_side: int | None = None,
        slide_window: int | None = None,
        slide_stride: int | None = None,
        tta: TTA = NO_TTA,
        max_probability_bytes: int = DEFAULT_MAX_PROBABILITY_BYTES,
    ) -> None:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if native_max_pixels < 1:
            raise ValueError(f"native_max_pixels must be at least 1, got {native_max_pixels}")
        if slide_long_side is not None and slide_long_side < 1:
            raise ValueError(f"slide_long_side must be at least 1, got {slide_long_side}")
        window = slide_window or default_window(int(crop_size))
        check_window(window, slide_stride)

        self.network = network
        self._num_classes = int(num_classes)
        self._crop_size = int(crop_size)
        self._class_names = list(class_names) if class_names else default_names(self._num_classes)
        self._palette = list(palette) if palette else voc_palette()
        self.algorithm = algorithm
        self.scale = scale
        self.native_max_pixels = int(native_max_pixels)
        self.slide_long_side = slide_long_side
        self.slide_window = window
        self.slide_stride = slide_stride  # None: 2/3 of the window
        self.tta = tta
        self.max_probability_bytes = int(max_probability_bytes)
        # Trace and plan memory now, so the first request is not the slow one.
        warm = self._forward_tile(np.zeros((3, self._crop_size, self._crop_size), dtype=np.float32))
        if warm.shape != (self._num_classes, self._crop_size, self._crop_size):
            raise ValueError(
                f"the network answers {warm.shape} for a {self._crop_size}x{self._crop_size} input; expected "
                f"({self._num_classes}, {self._crop_size}, {self._crop_size})"
            )

    @classmethod
    def from_network(
        cls,
        net: gluon.HybridBlock,
        num_classes: int,
        crop_size: int,
        ctx: mx.Context | None = None,
        **options: Any,
    ) -> Predictor:
        """Wrap an already built and initialised MXNet network (hybridized in place); `options` as __init__."""
        return cls(MXNetNetwork(net, crop_size, ctx), num_classes, crop_size, **options)

    # -- properties

    @property
    def backend(self) -> str:
        """'mxnet', 'onnxruntime' or 'openvino'."""
        return self.network.backend

    @property
    def precision(self) -> str:
        """What the network computes in: 'fp32', 'int8' or 'bf16'."""
        return self.network.precision

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def crop_size(self) -> int:
        return self._crop_size

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def palette(self) -> list[int]:
        """768 ints (256 RGB colours) for `PIL.Image.putpalette`."""
        return list(self._palette)

    # -- prediction

    def predict(
        self,
        image: np.ndarray,
        want_probabilities: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Prediction:
        """Segment an HxWx3 uint8 RGB image; the mask (and probabilities) come back at H x W.

        Probabilities over `max_probability_bytes` are refused (ProbabilitiesTooLarge) before any work.
        `progress(done, total)` is called as the network's windows (or tiles, or whole-picture passes) finish.
        """
        check_image(image)
        height, width = image.shape[:2]
        if want_probabilities:
            check_probabilities_size(self._num_classes, height, width, self.max_probability_bytes)
        views = self.tta.views
        counter = _Counter(sum(self.windows_for(height, width, scale, flipped) for scale, flipped in views), progress)
        prediction = Prediction(
            np.empty((height, width), dtype=np.uint8),
            np.empty((self._num_classes, height, width), dtype=np.float32) if want_probabilities else None,
        )
        for first, end in self.column_strips(height, width):  # one strip unless a slide band would be too wide
            strip = Prediction(
                prediction.mask[:, first:end],
                None if prediction.probabilities is None else prediction.probabilities[:, :, first:end],
            )
            streams = [self._view(image, scale, flipped, counter, (first, end)) for scale, flipped in views]
            combine(streams, self._num_classes, height, end - first, want_probabilities, out=strip)
        prediction.windows = counter.done
        return prediction

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class ids."""
        return self.predict(image).mask

    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 softmax probabilities."""
        return self.predict(image, want_probabilities=True).probabilities

    def native_logits(self, image: np.ndarray) -> np.ndarray:
        """Logits (C, h', w') of the whole image at its own size (or scaled down to `native_max_pixels`)."""
        check_image(image)
        data, new_h, new_w = native_canvas(image, self.native_max_pixels)
        return self.network.logits(data)[:, :new_h, :new_w]

    def averaged_logits(self, image: np.ndarray, short_side: int | None = None) -> np.ndarray:
        """Tile-averaged logits (C, h', w') at the resized resolution (padding removed); `short_side`: see
        geometry.resized_size."""
        check_image(image)
        crop = self._crop_size
        data, new_h, new_w = network_canvas(image, crop, short_side)
        canvas_h, canvas_w = data.shape[1:]
        total = np.zeros((self._num_classes, canvas_h, canvas_w), dtype=np.float32)
        ys, xs = tile_starts(canvas_h, crop), tile_starts(canvas_w, crop)
        for y in ys:
            for x in xs:
                tile = np.ascontiguousarray(data[:, y : y + crop, x : x + crop])
                total[:, y : y + crop, x : x + crop] += self._forward_tile(tile)
        # Tiles form a grid, so the overlap count is the product of per-axis counts.
        count_y = np.zeros(canvas_h, dtype=np.float32)
        count_x = np.zeros(canvas_w, dtype=np.float32)
        for y in ys:
            count_y[y : y + crop] += 1
        for x in xs:
            count_x[x : x + crop] += 1
        if len(ys) > 1 or len(xs) > 1:
            total /= count_y[None, :, None] * count_x[None, None, :]
        return total[:, :new_h, :new_w]

    def _forward_tile(self, tile: np.ndarray) -> np.ndarray:
        """Logits (C, crop, crop) for one normalised (3, crop, crop) tile."""
        return self.network.logits(tile)

    # -- views (test-time augmentation) and the slide scale

    def slide_resolution(self, height: int, width: int, scale: float = 1.0) -> tuple[int, int]:
        """The slide scale's working resolution for a height x width picture, times a TTA scale."""
        h, w = slide_size(height, width, self.slide_long_side)
        if scale != 1.0:
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
        return h, w

    def window_plan(self, height: int, width: int, scale: float = 1.0) -> WindowPlan:
        """The slide windows over a height x width picture (at TTA scale `scale`)."""
        return plan_windows(*self.slide_resolution(height, width, scale), self.slide_window, self.slide_stride)

    def column_strips(self, height: int, width: int) -> list[tuple[int, int]]:
        """The output column ranges a picture is done in: one, unless a slide band would pass SLIDE_BAND_BYTES."""
        if self.scale != "slide":
            return [(0, width)]
        widest = max(self.slide_resolution(height, width, scale)[1] for scale, _ in self.tta.views)
        band = 4 * self._num_classes * self.slide_window * widest
        return column_strips(width, -(-band // SLIDE_BAND_BYTES))

    def windows_for(self, height: int, width: int, scale: float = 1.0, flipped: bool = False) -> int:
        """How many network windows one view of a height x width picture takes at this Predictor's scale (at
        slide scale in column strips, the windows that straddle a strip's edge count once for each side)."""
        if self.scale == "slide":
            plan = self.window_plan(height, width, scale)
            total = 0
            for first, end in self.column_strips(height, width):
                if flipped:
                    first, end = width - end, width - first
                total += len(plan.ys) * len(strip_starts(plan, *source_columns(first, end, width, plan.width)))
            return total
        if self.scale == "crop":
            new_h, new_w = resized_size(height, width, self._crop_size, self._short_side(scale))
            crop = self._crop_size
            return len(tile_starts(max(new_h, crop), crop)) * len(tile_starts(max(new_w, crop), crop))
        return 1

    def _short_side(self, scale: float) -> int | None:
        return None if scale == 1.0 else max(1, round(self._crop_size * scale))

    def _view(
        self,
        image: np.ndarray,
        scale: float,
        flipped: bool,
        counter: _Counter,
        columns: tuple[int, int] | None = None,
    ) -> Iterator[np.ndarray]:
        """One view's logits resized to the image's size, in bands (postprocess.resize_bands); lazy.

        `columns` (slide scale): only output columns [first, end) of the image.
        """
        height, width = image.shape[:2]
        picture = image[:, ::-1] if flipped else image
        first, end = columns or (0, width)
        if flipped:  # the flipped view's output, mirrored back below, holds those columns mirrored
            first, end = width - end, width - first
        if self.scale == "slide":
            h, w = self.slide_resolution(height, width, scale)
            strip = source_columns(first, end, width, w)
            bands: Iterable[np.ndarray] = self._slide_bands(resize_picture(picture, h, w), counter, strip)
        else:
            picture = np.ascontiguousarray(picture)
            if self.scale == "native":
                if scale != 1.0:
                    picture = resize_picture(picture, max(1, round(height * scale)), max(1, round(width * scale)))
                logits = self.native_logits(picture)
            else:
                logits = self.averaged_logits(picture, self._short_side(scale))
            counter.add(self.windows_for(height, width, scale))
            h, w = logits.shape[1:]
            bands = [logits[:, :, slice(*source_columns(first, end, width, w))]]
        resized = resize_bands(bands, h, w, height, width, (first, end))
        # Mirrored back after the resize: a mirror-symmetric picture then gets exactly symmetric probabilities.
        yield from ((band[:, :, ::-1] for band in resized) if flipped else resized)

    def _slide_bands(
        self, picture: np.ndarray, counter: _Counter, columns: tuple[int, int] | None = None
    ) -> Iterator[np.ndarray]:
        """Blended logits (C, rows, w) of `picture` (h, w, 3) at slide scale, top to bottom (module docstring);
        with `columns` (start, stop), only those columns, from the windows that reach them."""
        h, w = picture.shape[:2]
        plan = plan_windows(h, w, self.slide_window, self.slide_stride)
        start, stop = columns or (0, w)
        starts = strip_starts(plan, start, stop)
        classes = self._num_classes
        rows = band_rows(classes, stop - start)
        per_batch = max(1, WINDOW_BATCH_BYTES // (4 * classes * plan.win_h * plan.win_w))
        band = np.zeros((classes, plan.win_h, stop - start), dtype=np.float32)  # rows y .. y + win_h
        for i, y in enumerate(plan.ys):
            valid_h = min(plan.win_h, h - y)
            weight_y = plan.weight_y[:valid_h, None]
            for first in range(0, len(starts), per_batch):
                xs = starts[first : first + per_batch]
                logits = self.network.logits(np.stack([_window_input(picture, y, x, plan) for x in xs]))
                for out, x in zip(logits, xs):
                    left, right = max(x, start), min(x + plan.win_w, w, stop)  # the window's part in the strip
                    part = out[:, :valid_h, left - x : right - x]
                    part *= weight_y * plan.weight_x[left - x : right - x]
                    band[:, :valid_h, left - start : right - start] += part
                counter.add(len(xs))
            final = (plan.ys[i + 1] if i + 1 < len(plan.ys) else h) - y  # rows no later window reaches
            coverage_x = plan.total_x[None, start:stop]
            for top in range(0, final, rows):
                end = min(top + rows, final)
                yield band[:, top:end] / (plan.total_y[y + top : y + end, None] * coverage_x)
            if i + 1 < len(plan.ys):
                keep = plan.win_h - final
                for plane in band:  # plane by plane: an overlapping move buffers one plane, not the band
                    plane[:keep] = plane[final : final + keep]
                band[:, keep:] = 0.0


# A slide band (C x window x width float32) larger than this is split into column strips: about 6,000 columns at
# 21 classes and window 512 (a 24 MP picture's width fits in one), so a 100 MP picture takes two strips.
SLIDE_BAND_BYTES = 384 << 20

# Windows per network call: as many as keep their logits (C x window^2 float32 each) within this: the ONNX
# backends run them as one batch; memory in flight stays bounded whatever the picture.
WINDOW_BATCH_BYTES = 64 << 20


def _window_input(picture: np.ndarray, y: int, x: int, plan: WindowPlan) -> np.ndarray:
    """The normalised (3, win_h, win_w) input of the window at (y, x), zero-padded past the picture's edge."""
    data = normalize(picture[y : y + plan.win_h, x : x + plan.win_w])
    pad_h, pad_w = plan.win_h - data.shape[1], plan.win_w - data.shape[2]
    if pad_h or pad_w:
        data = np.pad(data, ((0, 0), (0, pad_h), (0, pad_w)))
    return data


class _Counter:
    """Windows done out of a total, reported to a progress callback."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self._progress = total, 0, progress

    def add(self, count: int) -> None:
        self.done += count
        if self._progress is not None:
            self._progress(self.done, self.total)
