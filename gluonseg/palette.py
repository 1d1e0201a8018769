"""The PASCAL VOC colour map and class names, for indexed (mode "P") mask PNGs.

VOC masks store class ids as palette indices; the palette only decides how viewers colour them.
Index i gets its colour by spreading the bits of i over R, G and B, three bits per round, most
significant bit of each channel first. Index 255 ("ignore") comes out as (224, 224, 192), as in VOC.
"""

from __future__ import annotations

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
