"""A small VOC 2012 tree (lists, pictures, masks, and folders prepare_voc must ignore) for the VOC tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from gluonseg.palette import voc_palette

TRAIN_IDS = ["2007_000032", "2007_000039", "2008_000123"]
VAL_IDS = ["2009_000001", "2010_000002"]
UNLISTED = "2011_000099"  # has a picture and a mask but is in neither list
CHANNELS = ("train", "train_annotation", "validation", "validation_annotation")


def _jpeg(rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, size=(int(rng.integers(12, 20)), int(rng.integers(12, 20)), 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _mask(rng: np.random.Generator) -> bytes:
    mask = np.zeros((16, 18), dtype=np.uint8)
    y, x = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    mask[y : y + 8, x : x + 8] = 255  # the VOC-style border ...
    mask[y + 1 : y + 7, x + 1 : x + 7] = int(rng.integers(1, 21))  # ... around an object
    image = Image.fromarray(mask).convert("P")
    image.putpalette(voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_voc_tree(base: Path) -> Path:
    """base/VOCdevkit/VOC2012 with lists, pictures, masks and the folders prepare_voc must ignore."""
    root = base / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for folder in (
        "ImageSets/Segmentation",
        "ImageSets/Main",
        "JPEGImages",
        "SegmentationClass",
        "SegmentationObject",
        "Annotations",
    ):
        (root / folder).mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(TRAIN_IDS) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(VAL_IDS) + "\n")
    (root / "ImageSets/Segmentation/trainval.txt").write_text("\n".join(TRAIN_IDS + VAL_IDS) + "\n")
    (root / "ImageSets/Main/train.txt").write_text("2007_000027\n")
    for image_id in [*TRAIN_IDS, *VAL_IDS, UNLISTED]:
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(_jpeg(rng))
        (root / "SegmentationClass" / f"{image_id}.png").write_bytes(_mask(rng))
        (root / "SegmentationObject" / f"{image_id}.png").write_bytes(_mask(rng))
        (root / "Annotations" / f"{image_id}.xml").write_text("<annotation/>")
    (root / "JPEGImages" / "2007_000027.jpg").write_bytes(_jpeg(rng))  # detection-only picture
    return root
