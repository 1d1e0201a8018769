"""Training and validation transforms for (image, mask) pairs: numpy in, normalised numpy out.

The training augmentation follows GluonCV's `_sync_transform` (spec: sagemaker-contract §8, gluoncv-notes
§2.4), in this order: horizontal flip (p=0.5); long side rescaled to a random length in
[int(0.5*base_size), int(2.0*base_size)] keeping the aspect ratio (bilinear image, nearest mask); pad
right/bottom up to crop_size; random crop_size square crop; Gaussian blur (p=0.5, radius uniform in [0, 1));
ImageNet normalisation, HWC -> CHW.

One deliberate difference: padding fills the mask with 255 (ignore), not GluonCV's 0, so padded pixels are
never trained as class 0 (background).

Randomness only comes from the `rng` argument, so a seeded generator reproduces a sample exactly.
Resizing uses PIL, as GluonCV does, so antialiasing and rounding match the reference.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

# ImageNet statistics on the 0..1 scale, RGB order: what the pretrained backbones expect (the model folder
# records them too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)

IMAGE_PAD = 0
MASK_PAD = 255  # ignore: padding must not count as any class

# One multiply-add per pixel instead of divide, subtract, divide.
_SCALE = (1.0 / (255.0 * STD)).astype(np.float32)
_OFFSET = (MEAN / STD).astype(np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32, (pixel / 255 - MEAN) / STD."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    out = image.astype(np.float32) * _SCALE - _OFFSET
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 mask, got shape {mask.shape} dtype {mask.dtype}")
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")


def _resize_pair(image: np.ndarray, mask: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear for the image, nearest for the mask so no new class values appear."""
    if (height, width) == mask.shape:
        return image, mask
    img = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    msk = Image.fromarray(mask).resize((width, height), Image.NEAREST)
    return np.asarray(img), np.asarray(msk)


def random_long_side(base_size: int, rng: np.random.Generator) -> int:
    """A length drawn uniformly from [int(0.5*base_size), int(2.0*base_size)], both ends included."""
    low, high = int(0.5 * base_size), int(2.0 * base_size)
    return int(rng.integers(low, high + 1))


def rescale_long_side(image: np.ndarray, mask: np.ndarray, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the longer side is `long_side`, keeping the aspect ratio (short side rounded half up)."""
    h, w = mask.shape
    if h > w:
        oh, ow = long_side, int(w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(h * long_side / w + 0.5)
    # A very thin image could round its short side to 0, which PIL refuses.
    return _resize_pair(image, mask, max(ow, 1), max(oh, 1))


def pad_to(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad right and bottom up to `size` on each short side: image with 0, mask with 255."""
    h, w = mask.shape
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if not pad_h and not pad_w:
        return image, mask
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=IMAGE_PAD)
    mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=MASK_PAD)
    return image, mask


def train_transform(
    image: np.ndarray,
    mask: np.ndarray,
    crop_size: int,
    base_size: int,
    rng: np.random.Generator,
    *,
    flip_prob: float = 0.5,
    blur_prob: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The training augmentation: (3 x crop x crop float32 normalised image, crop x crop float32 mask).

    Draws from `rng` in a fixed order (flip, long side, crop x, crop y, blur, blur radius if blurring), so the
    probabilities can be changed (tests turn blur off) without shifting the other draws.
    """
    _check_pair(image, mask)
    if rng.random() < flip_prob:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image, mask = rescale_long_side(
        np.ascontiguousarray(image), np.ascontiguousarray(mask), random_long_side(base_size, rng)
    )
    image, mask = pad_to(image, mask, crop_size)
    h, w = mask.shape
    x0 = int(rng.integers(0, w - crop_size + 1))
    y0 = int(rng.integers(0, h - crop_size + 1))
    image = image[y0 : y0 + crop_size, x0 : x0 + crop_size]
    mask = mask[y0 : y0 + crop_size, x0 : x0 + crop_size]
    if rng.random() < blur_prob:
        # The blur comes after the crop, as in GluonCV: cheaper, and the padding edge gets blurred the same way.
        blurred = Image.fromarray(np.ascontiguousarray(image)).filter(ImageFilter.GaussianBlur(radius=rng.random()))
        image = np.asarray(blurred)
    return normalize(image), mask.astype(np.float32)


def val_crop_transform(image: np.ndarray, mask: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Short side resized to `crop_size` (long side truncated), then the centre `crop_size` square.

    Used when validation batches hold more than one image, so every sample has the same shape.
    """
    _check_pair(image, mask)
    h, w = mask.shape
    if w > h:
        oh, ow = crop_size, int(w * crop_size / h)
    else:
        ow, oh = crop_size, int(h * crop_size / w)
    image, mask = _resize_pair(image, mask, ow, oh)
    # round() as in the reference: ties go to the even offset.
    x0 = int(round((ow - crop_size) / 2.0))
    y0 = int(round((oh - crop_size) / 2.0))
    image = image[y0 : y0 + crop_size, x0 : x0 + crop_size]
    mask = mask[y0 : y0 + crop_size, x0 : x0 + crop_size]
    return normalize(image), mask.astype(np.float32)


def val_whole_transform(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole image, normalised, with its mask unchanged (validation_mini_batch_size = 1)."""
    _check_pair(image, mask)
    return normalize(image), mask.astype(np.float32)
