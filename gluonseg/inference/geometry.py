"""The sizes, canvases and tiles the network sees for an image, at each scale (numpy and PIL only).

Three scales, chosen per Predictor (server: `GLUONSEG_INFERENCE_SCALE`); the third, **slide** (the
picture at full resolution under sliding windows, for large pictures), has its windows and their blend
in gluonseg.inference.windows. The first two:

**native** (default): the image at its own resolution, as stock GluonCV's `predict()` runs it and as
validation with `validation_mini_batch_size=1` does. The image is padded right/bottom to a multiple
of 8 (at least NATIVE_MIN_SIDE a side) and goes through the network's graph re-specialised to that
shape (gluonseg.inference.shape_graphs: the same parameters, compiled once per shape, a small LRU of
shapes), which returns logits at the padded size; the padding is cropped off. On multiples of 8 this
is exactly `predict()`'s answer. Images over `native_max_pixels` (default NATIVE_MAX_PIXELS) are first
scaled down, aspect kept, so that one request's cost and memory stay bounded; the logits are then
resized back to the input's size (gluonseg.inference.postprocess).

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
   bilinearly (half-pixel centres) to the input's (H, W), softmax over classes (postprocess).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from gluonseg.data.transforms import normalize

SCALES = ("native", "crop", "slide")
DEFAULT_SCALE = "native"
NATIVE_MAX_PIXELS = 1 << 20  # 1024x1024: FCN-R50 at this size is ~0.6 TMAC; larger pictures are scaled down
NATIVE_MIN_SIDE = 64  # a padded side of at least 8 feature cells, so PSP's 6x6 pyramid bins see real cells
MULTIPLE = 8  # the backbone's output stride: the pooled branches must meet the feature map exactly
MAX_ASPECT = 8  # the resized long side is at most this many crops
TILE_STRIDE_RATE = 2.0 / 3.0  # as GluonCV's MultiEvalModel


def check_image(image: np.ndarray) -> None:
    """ValueError unless `image` is an HxWx3 uint8 array of at least 1x1."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {shape} dtype {dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1, got shape {image.shape}")


# -- crop scale


def resized_size(height: int, width: int, crop_size: int, short_side: int | None = None) -> tuple[int, int]:
    """(h', w') the image is resized to: short side crop_size (long side truncated), long side capped.

    `short_side` replaces crop_size as the short side's target (test-time augmentation's scales); the cap
    is MAX_ASPECT times that target. When the cap applies, the short side is scaled by the same factor
    (rounded, at least 1 pixel).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    target = short_side or crop_size
    short, long = min(height, width), max(height, width)
    max_long = MAX_ASPECT * target
    new_short, new_long = target, int(long * target / short)
    if new_long > max_long:
        new_long = max_long
        new_short = max(1, int(short * max_long / long + 0.5))
    return (new_short, new_long) if height <= width else (new_long, new_short)


def tile_starts(length: int, crop_size: int) -> list[int]:
    """Tile offsets along one side: 0, stride, 2*stride, ... and the last flush with the end."""
    if length <= crop_size:
        return [0]
    stride = max(1, int(crop_size * TILE_STRIDE_RATE))
    count = -(-(length - crop_size) // stride) + 1
    return [min(i * stride, length - crop_size) for i in range(count)]


def network_canvas(image: np.ndarray, crop_size: int, short_side: int | None = None) -> tuple[np.ndarray, int, int]:
    """Steps 1-2 of the module docstring: (normalised, padded (3, H', W') float32, resized h', resized w')."""
    new_h, new_w = resized_size(image.shape[0], image.shape[1], crop_size, short_side)
    data = normalize(resize_picture(image, new_h, new_w))
    canvas_h, canvas_w = max(new_h, crop_size), max(new_w, crop_size)
    if (canvas_h, canvas_w) != (new_h, new_w):
        data = np.pad(data, ((0, 0), (0, canvas_h - new_h), (0, canvas_w - new_w)))
    return data, new_h, new_w


def network_tiles(image: np.ndarray, crop_size: int) -> list[np.ndarray]:
    """The (3, crop, crop) float32 tiles the network sees for `image`: INT8 calibration uses exactly these."""
    check_image(image)
    data, _, _ = network_canvas(image, crop_size)
    return [
        np.ascontiguousarray(data[:, y : y + crop_size, x : x + crop_size])
        for y in tile_starts(data.shape[1], crop_size)
        for x in tile_starts(data.shape[2], crop_size)
    ]


# -- native scale


def native_size(height: int, width: int, native_max_pixels: int = NATIVE_MAX_PIXELS) -> tuple[int, int]:
    """(h', w') the native scale runs at: the image's own size, scaled down (aspect kept, at least 1 pixel a
    side) until its padded canvas holds at most `native_max_pixels` pixels."""
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    h, w = height, width
    while True:
        canvas_h, canvas_w = native_canvas_shape(h, w)
        if canvas_h * canvas_w <= native_max_pixels or (h, w) == (1, 1):
            return h, w
        factor = min(0.99, (native_max_pixels / (canvas_h * canvas_w)) ** 0.5)
        h, w = max(1, int(h * factor)), max(1, int(w * factor))


def native_canvas_shape(height: int, width: int) -> tuple[int, int]:
    """The padded input the network gets at native scale: a multiple of 8, at least NATIVE_MIN_SIDE a side."""

    def side(n: int) -> int:
        return max(NATIVE_MIN_SIDE, -(-n // MULTIPLE) * MULTIPLE)

    return side(height), side(width)


def resize_picture(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` (HxWx3 uint8, any strides) resized to height x width with PIL's bilinear filter; as is if equal."""
    if (height, width) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))


def native_canvas(image: np.ndarray, native_max_pixels: int = NATIVE_MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """(normalised, padded (3, H', W') float32, h', w'): the native-scale input for `image` (`native_size`)."""
    new_h, new_w = native_size(image.shape[0], image.shape[1], native_max_pixels)
    data = normalize(resize_picture(image, new_h, new_w))
    canvas_h, canvas_w = native_canvas_shape(new_h, new_w)
    if (canvas_h, canvas_w) != (new_h, new_w):
        data = np.pad(data, ((0, 0), (0, canvas_h - new_h), (0, canvas_w - new_w)))
    return data, new_h, new_w
