"""The Predictor: a compiled network that segments images of any size (no file I/O; see loading.py).

The method, scale by scale, is in gluonseg.inference.geometry; the resize, softmax and argmax of the
logits in gluonseg.inference.postprocess. The network is any backend's (gluonseg.inference.network):
MXNet in FP32, INT8 or BF16, or the exported ONNX model in ONNX Runtime or OpenVINO; everything around
it is the same, so every backend answers through the same geometry and post-processing.

Threads: the network serialises its own calls where it must; resizing and post-processing of
concurrent requests run in parallel.
"""

from __future__ import annotations

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
from gluonseg.inference.network import MXNetNetwork, Network
from gluonseg.inference.postprocess import Prediction, logits_to_prediction
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
    ) -> None:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if native_max_pixels < 1:
            raise ValueError(f"native_max_pixels must be at least 1, got {native_max_pixels}")

        self.network = network
        self._num_classes = int(num_classes)
        self._crop_size = int(crop_size)
        self._class_names = list(class_names) if class_names else default_names(self._num_classes)
        self._palette = list(palette) if palette else voc_palette()
        self.algorithm = algorithm
        self.scale = scale
        self.native_max_pixels = int(native_max_pixels)
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
        return self.network.logits(data)[:, :new_h, :new_w]

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
        return self.network.logits(tile)
