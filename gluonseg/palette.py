"""The PASCAL VOC colour map and class names, for indexed (mode "P") mask PNGs.

VOC masks store class ids as palette indices; the palette only decides how viewers colour them.
Index i gets its colour by spreading the bits of i over R, G and B, three bits per round, most
significant bit of each channel first. Index 255 ("ignore") comes out as (224, 224, 192), as in VOC.
"""

from __future__ import annotations

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def voc_colour(index: int) -> tuple[int, int, int]:
    """The VOC colour of one palette index (0..255)."""
    if not 0 <= index <= 255:
        raise ValueError(f"palette index must be in 0..255, got {index}")
    r = g = b = 0
    bits = index
    for shift in range(7, -1, -1):
        r |= (bits & 1) << shift
        g |= ((bits >> 1) & 1) << shift
        b |= ((bits >> 2) & 1) << shift
        bits >>= 3
    return r, g, b


def voc_palette() -> list[int]:
    """All 256 VOC colours flattened to 768 ints, ready for `PIL.Image.putpalette`."""
    return [channel for index in range(256) for channel in voc_colour(index)]


def class_names(n: int) -> list[str]:
    """`n` class names: the VOC names while they last, then `class_<i>`."""
    if n < 0:
        raise ValueError(f"number of classes must be >= 0, got {n}")
    return [VOC_CLASSES[i] if i < len(VOC_CLASSES) else f"class_{i}" for i in range(n)]


BACKGROUND = 0  # class 0 is left unblended, so the picture stays readable where nothing was found


def colour_table(palette: list[int]) -> np.ndarray:
    """(256, 3) uint8: the RGB colour of each index of a flat palette (missing entries black)."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    values = np.asarray(palette[: 256 * 3], dtype=np.uint8)
    colours.reshape(-1)[: values.size] = values
    return colours


BAND_PIXELS = 1 << 20  # the blend runs over row bands of about this many pixels: float copies of a band, not a picture


def blend(
    image: np.ndarray, mask: np.ndarray, palette: list[int], alpha: float = 0.5, out: np.ndarray | None = None
) -> np.ndarray:
    """(H, W, 3) uint8: `image * (1 - alpha) + colour * alpha` where the mask is not background, rounded.

    Computed band by band, so a 100 MP picture needs no picture-sized float array. `out`: where to write
    (it may be `image` itself, when the caller no longer needs the picture); a new array by default.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    if out is None:
        out = image.copy()
    elif out is not image:
        out[...] = image
    colours = colour_table(palette)
    rows = max(1, BAND_PIXELS // max(1, image.shape[1]))
    for top in range(0, image.shape[0], rows):
        band = mask[top : top + rows]
        painted = band != BACKGROUND
        if not painted.any():
            continue
        pixels = out[top : top + rows]
        mixed = pixels[painted].astype(np.float32) * (1.0 - alpha) + colours[band[painted]].astype(np.float32) * alpha
        pixels[painted] = np.floor(mixed + 0.5).astype(np.uint8)
    return out
