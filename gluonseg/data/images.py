"""Decoding training images and annotation masks, with errors that name the file.

Used for File-mode channels (paths) and Pipe-mode records (bytes) alike, so both modes accept and
refuse exactly the same data.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from gluonseg.errors import ClientError

Source = Union[str, Path, bytes]

# Training images are trusted more than HTTP bodies, but a 1-gigapixel "image" is still a mistake.
MAX_TRAINING_PIXELS = 178_956_970  # PIL's own bomb threshold (2 x its warning level)

MASK_MODES = ("P", "L")
# The channels hold JPEG images and PNG masks. Only these decoders see training bytes: Pillow's other
# plugins (PSD, TGA, ...) have had memory-safety bugs (CVE-2026-25990, SECURITY.md), and a file that is
# something else under a .jpg name is a data mistake to name, not to decode.
FORMATS = ("JPEG", "PNG")


def _too_large(name: str, size: str = "") -> ClientError:
    return ClientError(
        f"{name}: the image is too large ({size or 'its header claims more pixels than the limit'}); "
        f"a training image or mask may have at most {MAX_TRAINING_PIXELS} pixels"
    )


def _open_header(source: Source, name: str) -> Image.Image:
    """The image with its header read and checked, pixels not yet decoded: JPEG or PNG, a size > 0,
    at most MAX_TRAINING_PIXELS (the one bound for images and masks)."""
    try:
        with warnings.catch_warnings():
            # PIL warns past MAX_IMAGE_PIXELS and raises past twice that; the bound is ours, checked below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS)
    except Image.DecompressionBombError:
        raise _too_large(name) from None
    except FileNotFoundError:
        raise ClientError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise ClientError(f"{name}: not a readable JPEG or PNG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ClientError(f"{name}: cannot decode image ({exc})") from None
    width, height = img.size
    if width * height > MAX_TRAINING_PIXELS:
        img.close()
        raise _too_large(name, f"{width}x{height} pixels")
    if width < 1 or height < 1:
        img.close()
        raise ClientError(f"{name}: the image header says {width}x{height} pixels")
    return img


def _open(source: Source, name: str) -> Image.Image:
    img = _open_header(source, name)
    try:
        # `import gluoncv` turns this process-wide flag on; truncated files must fail, not load gray.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ClientError(f"{name}: cannot decode image ({exc})") from None
    return img


def load_image(source: Source, name: str, apply_exif: bool = True) -> np.ndarray:
    """An RGB uint8 array (H, W, 3), any colour mode converted.

    `apply_exif` turns the pixels the way the EXIF orientation says (what a viewer shows). Training
    pairs turn it off when the mask was drawn on the stored pixel grid.
    """
    img = _open(source, name)
    if apply_exif:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
            pass
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA").convert("RGB")
        elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            top = max(arr.max(), 1.0)
            img = Image.fromarray((arr * (255.0 / top)).astype(np.uint8)).convert("RGB")
        else:
            img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def load_mask(source: Source, name: str) -> np.ndarray:
    """A class-id mask: uint8 (H, W). Refuses colour, 16-bit and non-PNG-like masks by name."""
    img = _open(source, name)
    if img.mode not in MASK_MODES:
        kind = {
            "RGB": "a colour (RGB) image",
            "RGBA": "a colour (RGBA) image",
            "I;16": "a 16-bit image",
            "I;16B": "a 16-bit image",
            "I": "a 32-bit image",
            "I;16L": "a 16-bit image",
            "1": "a 1-bit image",
            "LA": "a grayscale+alpha image",
            "F": "a float image",
        }.get(img.mode, f"mode {img.mode}")
        raise ClientError(
            f"{name}: the mask is {kind}; masks must be single-channel 8-bit PNGs (mode P or L) holding class ids"
        )
    return np.asarray(img, dtype=np.uint8)


def image_size(source: Source, name: str) -> tuple[int, int]:
    """(width, height) from the header only, no pixel decode, after the checks `load_image` makes on
    the header (format, a readable header, the pixel bound): the up-front scan's test of an image."""
    with _open_header(source, name) as img:
        return img.size
