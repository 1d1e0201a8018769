"""Whole-image prediction with a trained network: the one code path behind the server, batch transform and CLI.

Two scales, chosen per Predictor (server: `GLUONSEG_INFERENCE_SCALE`):

**native** (default): the image at its own resolution, as stock GluonCV's `predict()` runs it and as
validation with `validation_mini_batch_size=1` does. The image is padded right/bottom to a multiple
of 8 (at least NATIVE_MIN_SIDE a side) and goes through the network's graph re-specialised to that
shape (gluonseg.shape_graphs: the same parameters, compiled once per shape, a small LRU of shapes),
which returns logits at the padded size; the padding is cropped off. On multiples of 8 this is
exactly `predict()`'s answer. Images over `max_pixels` (default NATIVE_MAX_PIXELS) are first
scaled down, aspect kept, so that one request's cost and memory stay bounded; the logits are then
resized back to the input's size as below.

**crop**: the image rescaled so its short side is crop_size (the scale validation with
`validation_mini_batch_size>1` measures), covered with crop x crop tiles. Cheaper on large pictures
(an 800x600 picture at crop 240 costs 2 tiles of 240x240 instead of 800x600 pixels), but its masks
differ from stock GluonCV's. Why tiles: GluonCV's networks have a fixed output size (spec
gluoncv-notes §3.3), so the network is built without the aux head, hybridized once with
`static_alloc=True, static_shape=True` and only ever sees one input shape, (1, 3, crop_size,
crop_size): the graph is traced and memory planned once, at load time (a warm-up forward, which
both scales do), never per request. Everything that depends on the image size happens around it in
numpy:

1. Resize (PIL bilinear, aspect kept) so the SHORT side is crop_size, long side truncated, as the
   validation crops are made (`val_crop_transform`); small images are scaled up. An extreme aspect
   ratio would make the long side, and the tile count, explode (1x20000 -> 240x4,800,000), so the
   scale is capped so that the long side is at most MAX_ASPECT * crop_size; the short side then comes
   out below crop_size (at least 1 pixel).
2. Normalise with the ImageNet mean/std (`gluonseg.data.transforms.normalize`); pad right/bottom with
   zeros (the mean colour) to at least crop_size on each side.
3. Cover the canvas with crop x crop tiles, stride int(2/3 * crop) as GluonCV's `MultiEvalModel`,
   the first tile at 0 and the last flush with the right/bottom edge (no padding needed when a side is
   >= crop). Each tile goes through the network alone (batch 1: a fixed batch dimension too). A 4:3
   picture makes 2 tiles; the aspect cap bounds any picture to 12 (one row of 8 crops).
4. Average the logits of overlapping tiles, crop the padding away, resize the logits (C, h', w')
   bilinearly (half-pixel centres) to the input's (H, W), softmax over classes.

Memory: the resized logits are never held whole. Step 4's resize, softmax and argmax run in
horizontal bands of about BAND_ELEMENTS floats, so a mask-only prediction of a 4000x3000 picture with
21 classes needs about 35 MB, not the 1 GB the full (21, 3000, 4000) float32 array would take. Asking
for probabilities makes that (C, H, W) float32 array the answer itself, so its size is inherent. The
time of step 4 grows with C x H x W (memory-bound: 2-3 s for that picture on a 2-core CPU, under 0.1 s
for a 500x375 VOC picture).

Exactness: the mask is the argmax of the very same band of probabilities that the probability path
returns (same code, same bands), so `predict_mask(x)` equals `predict_probabilities(x).argmax(0)` bit
for bit, ties included (argmax of logits alone could differ where softmax rounds two classes to the
same float).

Threads: a static-alloc CachedOp runs every call in the same preallocated memory, so one lock
serialises the network calls (any shape, with the look-up of the shape's graph, which may evict
another's) and the copy of their output to numpy; resizing and post-processing of concurrent
requests run in parallel.

Precision: `from_model_dir(..., precision='int8'|'bf16')` swaps the network for a oneDNN INT8 or BF16
graph of the same input and output shape (gluonseg.quantization); everything around it is unchanged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon
from PIL import Image

from gluonseg.data.transforms import normalize
from gluonseg.shape_graphs import MULTIPLE as SHAPE_MULTIPLE
from gluonseg.shape_graphs import ShapeGraphs

log = logging.getLogger(__name__)

SCALES = ("native", "crop")
DEFAULT_SCALE = "native"
NATIVE_MAX_PIXELS = 1 << 20  # 1024x1024: FCN-R50 at this size is ~0.6 TMAC; larger pictures are scaled down
NATIVE_MIN_SIDE = 64  # a padded side of at least 8 feature cells, so PSP's 6x6 pyramid bins see real cells
GRAPH_CACHE = 2  # compiled native shapes kept per Predictor (each holds its own memory plan)
MAX_ASPECT = 8  # the resized long side is at most this many crops
TILE_STRIDE_RATE = 2.0 / 3.0  # as GluonCV's MultiEvalModel
BAND_ELEMENTS = 1 << 20  # floats per band of resized logits: 4 MB float32 temporaries stay near the caches


@dataclass
class Prediction:
    """A mask (H, W) uint8 and, when asked for, class probabilities (C, H, W) float32."""

    mask: np.ndarray
    probabilities: np.ndarray | None = None


def resized_size(height: int, width: int, crop_size: int) -> tuple[int, int]:
    """(h', w') the image is resized to: short side crop_size (long side truncated), long side capped.

    When the cap applies, the short side is scaled by the same factor (rounded, at least 1 pixel).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    short, long = min(height, width), max(height, width)
    max_long = MAX_ASPECT * crop_size
    new_short, new_long = crop_size, int(long * crop_size / short)
    if new_long > max_long:
        new_long = max_long
        new_short = max(1, int(short * max_long / long + 0.5))
    return (new_short, new_long) if height <= width else (new_long, new_short)


def native_size(height: int, width: int, max_pixels: int = NATIVE_MAX_PIXELS) -> tuple[int, int]:
    """(h', w') the native scale runs at: the image's own size, scaled down (aspect kept, at least 1 pixel a
    side) until its padded canvas holds at most `max_pixels` pixels."""
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    h, w = height, width
    while True:
        canvas_h, canvas_w = native_canvas_shape(h, w)
        if canvas_h * canvas_w <= max_pixels or (h, w) == (1, 1):
            return h, w
        factor = min(0.99, (max_pixels / (canvas_h * canvas_w)) ** 0.5)
        h, w = max(1, int(h * factor)), max(1, int(w * factor))


def native_canvas_shape(height: int, width: int) -> tuple[int, int]:
    """The padded input the network gets at native scale: a multiple of 8, at least NATIVE_MIN_SIDE a side."""

    def side(n: int) -> int:
        return max(NATIVE_MIN_SIDE, -(-n // SHAPE_MULTIPLE) * SHAPE_MULTIPLE)

    return side(height), side(width)


def tile_starts(length: int, crop_size: int) -> list[int]:
    """Tile offsets along one side: 0, stride, 2*stride, ... and the last flush with the end."""
    if length <= crop_size:
        return [0]
    stride = max(1, int(crop_size * TILE_STRIDE_RATE))
    count = -(-(length - crop_size) // stride) + 1
    return [min(i * stride, length - crop_size) for i in range(count)]


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


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {shape} dtype {dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1, got shape {image.shape}")


def network_canvas(image: np.ndarray, crop_size: int) -> tuple[np.ndarray, int, int]:
    """Steps 1-2 of the module docstring: (normalised, padded (3, H', W') float32, resized h', resized w')."""
    new_h, new_w = resized_size(image.shape[0], image.shape[1], crop_size)
    if (new_h, new_w) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    data = normalize(image)
    canvas_h, canvas_w = max(new_h, crop_size), max(new_w, crop_size)
    if (canvas_h, canvas_w) != (new_h, new_w):
        data = np.pad(data, ((0, 0), (0, canvas_h - new_h), (0, canvas_w - new_w)))
    return data, new_h, new_w


def network_tiles(image: np.ndarray, crop_size: int) -> list[np.ndarray]:
    """The (3, crop, crop) float32 tiles the network sees for `image`: INT8 calibration uses exactly these."""
    _check_image(image)
    data, _, _ = network_canvas(image, crop_size)
    return [
        np.ascontiguousarray(data[:, y : y + crop_size, x : x + crop_size])
        for y in tile_starts(data.shape[1], crop_size)
        for x in tile_starts(data.shape[2], crop_size)
    ]


class Predictor:
    """A hybridized network that segments images of any size (see the module docstring for the method)."""

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
        max_pixels: int = NATIVE_MAX_PIXELS,
    ) -> None:
        from gluonseg.palette import class_names as default_names
        from gluonseg.palette import voc_palette

        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")

        self.net = net
        self.ctx = ctx or mx.cpu()
        self._num_classes = int(num_classes)
        self._crop_size = int(crop_size)
        self._class_names = list(class_names) if class_names else default_names(self._num_classes)
        self._palette = list(palette) if palette else voc_palette()
        self.algorithm = algorithm
        self.precision = precision  # what the network runs in: 'fp32', 'int8' or 'bf16'
        self.scale = scale
        self.max_pixels = int(max_pixels)
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

    @classmethod
    def from_model_dir(
        cls,
        folder: Path,
        ctx: mx.Context | None = None,
        precision: str = "fp32",
        calibration_dir: Path | None = None,
        calibration_images: int | None = None,
        scale: str = DEFAULT_SCALE,
        max_pixels: int = NATIVE_MAX_PIXELS,
    ) -> Predictor:
        """Load a model folder (gluonseg.artifacts format); the aux head in the file is dropped.

        scale: 'native' or 'crop' (module docstring); max_pixels bounds the native scale.

        precision: 'fp32' (default), 'int8' or 'bf16' (oneDNN, CPU); see gluonseg.quantization for where
        INT8 comes from (the exported model-int8-* files, else calibration on `calibration_dir`'s images)
        and when a precision falls back to fp32. `predictor.precision` says what was used.
        """
        from gluonseg.artifacts import read_model_dir
        from gluonseg.quantization import DEFAULT_CALIBRATION_IMAGES, network_for_precision

        artifact = read_model_dir(Path(folder))
        hp = artifact.hp
        ctx = ctx or mx.cpu()
        net, used = network_for_precision(
            artifact,
            precision,
            ctx,
            calibration_dir=calibration_dir,
            calibration_images=calibration_images or DEFAULT_CALIBRATION_IMAGES,
        )
        log.info(
            "loaded %s (%s on %s, %d classes, crop %d, %s, %s scale)",
            artifact.params_path,
            hp.algorithm,
            hp.backbone,
            artifact.num_classes,
            hp.crop_size,
            used,
            scale,
        )
        return cls(
            net,
            artifact.num_classes,
            hp.crop_size,
            ctx,
            artifact.class_names,
            artifact.meta.get("palette"),
            hp.algorithm,
            precision=used,
            scale=scale,
            max_pixels=max_pixels,
        )

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
        _check_image(image)
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
        """Logits (C, h', w') of the whole image at its own size (or scaled down to `max_pixels`)."""
        _check_image(image)
        new_h, new_w = native_size(image.shape[0], image.shape[1], self.max_pixels)
        if (new_h, new_w) != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        data = normalize(image)
        canvas_h, canvas_w = native_canvas_shape(new_h, new_w)
        if (canvas_h, canvas_w) != (new_h, new_w):
            data = np.pad(data, ((0, 0), (0, canvas_h - new_h), (0, canvas_w - new_w)))
        # Getting the shape's graph and running it form one step: another thread's new shape may evict
        # (and release) this graph, which must not happen between the two.
        with self._lock:
            if self._native is None:
                self._native = ShapeGraphs(self.net, self._crop_size, self.ctx, GRAPH_CACHE, self._shape_converter())
            logits = self._forward(self._native.get(canvas_h, canvas_w), data)
        return logits[:, :new_h, :new_w]

    def averaged_logits(self, image: np.ndarray) -> np.ndarray:
        """Tile-averaged logits (C, h', w') at the resized resolution (padding removed)."""
        _check_image(image)
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

    def _shape_converter(self) -> Any:
        if self.precision != "bf16":
            return None
        from gluonseg.quantization import bfloat16_at_shape

        return lambda graph, height, width: bfloat16_at_shape(graph, height, width, self.ctx)

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
