"""The JPEGs the benchmarks send."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PICTURE_SIZE = (800, 600)  # (width, height): the size of the GluonCV notebook's pictures


def encode_jpeg(picture: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def noise_jpeg(width: int, height: int, seed: int) -> bytes:
    """Uniform random pixels: the worst case for the JPEG decoder, any content for the network."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode_jpeg(Image.fromarray(pixels))


def noise_jpegs(width: int, height: int, count: int = 16) -> list[bytes]:
    return [noise_jpeg(width, height, seed) for seed in range(count)]


def photo_jpeg(width: int = PICTURE_SIZE[0], height: int = PICTURE_SIZE[1], seed: int = 1) -> bytes:
    """Smooth colour gradients with mild noise: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // width], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return encode_jpeg(Image.fromarray(pixels))


def synthetic_picture(classes: int, seed: int = 1) -> tuple[bytes, np.ndarray]:
    """A generated PICTURE_SIZE JPEG in the style of the generated dataset, and its ground-truth mask."""
    from gluonseg.data.synthetic import JPEG_QUALITY, make_layout, render_picture

    layout = make_layout(seed, 0, 700, classes, top_class=1)
    picture = Image.fromarray(render_picture(layout, seed, 0, classes)).resize(PICTURE_SIZE, Image.BILINEAR)
    mask = np.asarray(Image.fromarray(layout.mask()).resize(PICTURE_SIZE, Image.NEAREST))
    return encode_jpeg(picture, JPEG_QUALITY), mask
