"""The Predictor: a network in memory that segments images of any size (no file I/O; see loading.py).

The method, scale by scale, is in gluonseg.inference.geometry; the resize, softmax and argmax of the
logits in gluonseg.inference.postprocess.

Threads: a static-alloc CachedOp runs every call in the same preallocated memory, so one lock
serialises the network calls (any shape, with the look-up of the shape's graph, which may evict
another's) and the copy of their output to numpy; resizing and post-processing of concurrent
requests run in parallel.

Precision: gluonseg.inference.loading swaps the network for a oneDNN INT8 or BF16 graph of the same
input and output shape (gluonseg.inference.precision); everything around it is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluonseg.inference.geometry import (
    DEFAULT_SCALE,
    NATIVE_MAX_PIXELS,
    SCALES,
    check_image,
    native_canvas,
    network_canvas,
    tile_starts,
)
from gluonseg.inference.postprocess import Prediction, logits_to_prediction
from gluonseg.inference.shape_graphs import ShapeGraphs
from gluonseg.palette import class_names as default_names
from gluonseg.palette import voc_palette

GRAPH_CACHE = 2  # compiled native shapes kept per Predictor (each holds its own memory plan)

# A last step per native-scale graph: (FP32 graph, height, width) -> the graph to run (BF16 converts per shape).
ShapeConverter = Callable[[gluon.HybridBlock, int, int], gluon.HybridBlock]


class Predictor:
    """A hybridized network that segments images of any size (gluonseg.inference.geometry describes how)."""

    def __init__(
        self,
        net: gluon.HybridBlock,
        num_classes: int,
        crop_size: int,
        ctx: mx.Context | None = None,
        class_names: list[str] | None = None,
        palette: list[int] | None = None,
        algorithm: str | None = None,
        precision: str = "fp32",
        scale: str = DEFAULT_SCALE,
        native_max_pixels: int = NATIVE_MAX_PIXELS,
        shape_converter: ShapeConverter | None = None,
    ) -> None:
        """`precision` names what `net` runs in; `shape_converter` finishes each native-scale graph (BF16)."""
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if native_max_pixels < 1:
            raise ValueError(f"native_max_pixels must be at least 1, got {native_max_pixels}")

        self.net = net
        self.ctx = ctx or mx.cpu()
        self._num_classes = int(num_classes)
        self._crop_size = int(crop_size)
        self._class_names = list(class_names) if class_names else default_names(self._num_classes)
        self._palette = list(palette) if palette else voc_palette()
        self.algorithm = algorithm
        self.precision = precision  # what the network runs in: 'fp32', 'int8' or 'bf16'
        self.scale = scale
        self.native_max_pixels = int(native_max_pixels)
        self._shape_converter = shape_converter
        self._lock = threading.RLock()
        net.hybridize(static_alloc=True, static_shape=True)
        # Trace and plan memory now, so the first request is not the slow one.
        warm = self._forward_tile(np.zeros((3, self._crop_size, self._crop_size), dtype=np.float32))
        if warm.shape != (self._num_classes, self._crop_size, self._crop_size):
            raise ValueError(
                f"the network answers {warm.shape} for a {self._crop_size}x{self._crop_size} input; expected "
                f"({self._num_classes}, {self._crop_size}, {self._crop_size})"
            )
        self._native: ShapeGraphs | None = None  # traced on the first native-scale call

    @classmethod
    def from_network(cls, net: gluon.HybridBlock, num_classes: int, crop_size: int, **options: Any) -> Predictor:
        """Wrap an already built and initialised network (it gets hybridized in place); `options` as __init__."""
        return cls(net, num_classes, crop_size, **options)

    # -- properties

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

    def predict(self, image: np.ndarray, want_probabilities: bool = False) -> Prediction:
        """Segment an HxWx3 uint8 RGB image; the mask (and probabilities) come back at H x W."""
        check_image(image)
        height, width = image.shape[:2]
        logits = self.native_logits(image) if self.scale == "native" else self.averaged_logits(image)
        return logits_to_prediction(logits, height, width, want_probabilities)

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
        canvas_h, canvas_w = data.shape[1:]
        # Getting the shape's graph and running it form one step: another thread's new shape may evict
        # (and release) this graph, which must not happen between the two.
        with self._lock:
            if self._native is None:
                self._native = ShapeGraphs(self.net, self._crop_size, self.ctx, GRAPH_CACHE, self._shape_converter)
            logits = self._forward(self._native.get(canvas_h, canvas_w), data)
        return logits[:, :new_h, :new_w]

    def averaged_logits(self, image: np.ndarray) -> np.ndarray:
        """Tile-averaged logits (C, h', w') at the resized resolution (padding removed)."""
        check_image(image)
        crop = self._crop_size
        data, new_h, new_w = network_canvas(image, crop)
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
        return self._forward(self.net, tile)

    def _forward(self, graph: gluon.HybridBlock, data: np.ndarray) -> np.ndarray:
        """Logits (C, h, w) of `graph` for one normalised (3, h, w) input."""
        with self._lock:
            out: Any = graph(mx.nd.array(data[None], ctx=self.ctx, dtype=np.float32))
            if isinstance(out, list | tuple):
                out = out[0]
            if out.dtype != np.float32:  # a lower-precision graph may end in its own dtype
                out = out.astype(np.float32)
            # Copy out while holding the lock: the static-alloc CachedOp may reuse this buffer next call.
            return out.asnumpy()[0]
