"""A small, generated segmentation dataset in the SageMaker channel layout, for tests, demos and benchmarks.

Each picture is a noisy, shaded, cluttered background (class 0) with a few overlapping shapes on it
(circles, rectangles, triangles, ellipses; later shapes hide earlier ones). Class k is recognisable by
its appearance, never by an exact RGB value: a hue band of its own plus a texture (plain, stripes,
checks or dots), with per-object colour jitter and per-pixel noise on top. As in PASCAL VOC, masks are
indexed PNGs with a 255 ("ignore") band a few pixels wide along every object outline.

Every picture draws from two random streams seeded by (seed, picture number): one for the layout (size,
shapes, classes) and one for the appearance. So a picture does not depend on the others, and
`make_masks_only` writes the very same masks as `make_dataset` without spending time on the pictures.

`rare=K` makes the last K class ids rare, for class-imbalance work: instead of shapes they are short thick
strokes (a scratch) or one small blob (a lesion), about 8-16 pixels across at size 128, so that they stay
learnable at the networks' output stride of 8; drawn last, from a stream of their own, with no ignore band
around them. Picture i always holds rare class i mod K and each other rare class only now and then, so each
rare class holds under 1% of the labelled pixels; `make_dataset` reports the shares.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from gluonseg.data.label_map import IGNORE
from gluonseg.data.voc import prepare_output_dirs, write_scale_label_maps
from gluonseg.errors import ClientError
from gluonseg.palette import class_names, voc_palette

SHAPES = ("circle", "rectangle", "triangle", "ellipse")
TEXTURES = ("plain", "stripes", "checks", "dots")
JPEG_QUALITY = 90
MAX_CLASSES = 255  # ids 0..254; 255 is the ignore value
MIN_SIZE = 32

_LAYOUT, _APPEARANCE, _RARE = 0, 1, 2  # the random streams of one picture
RARE_PRESENCE = 0.15  # chance that a picture holds a given rare class (besides its guaranteed one)
_PALETTE = voc_palette()


@dataclass(frozen=True)
class Layout:
    """What a mask says: the picture size, the instance map and each instance's class."""

    width: int
    height: int
    instances: np.ndarray  # (H, W) uint8: 0 background, j = j-th shape drawn (1-based)
    instance_classes: np.ndarray  # (n_shapes + 1,) uint8, entry 0 is the background
    shapes: np.ndarray | None = None  # with rare objects: the instance map before they were drawn on it

    def mask(self) -> np.ndarray:
        """Class ids with 255 along every shape outline (object/background and object/object); rare objects
        (drawn over `shapes`) keep their class everywhere."""
        mask = self.instance_classes[self.instances]
        shapes = self.instances if self.shapes is None else self.shapes
        reach = 2 if min(self.width, self.height) >= 96 else 1  # band about 2 * reach pixels wide, straddling the edge
        band = _window_max(shapes, reach) != _window_min(shapes, reach)
        if self.shapes is not None:
            band &= self.instances == self.shapes
        mask[band] = IGNORE
        return mask


def _window_extreme(values: np.ndarray, reach: int, pick: Any) -> np.ndarray:
    """Max or min over the (2*reach+1)^2 square around each pixel, edges repeated; separable, so cheap."""
    padded = np.pad(values, reach, mode="edge")
    h, w = values.shape
    rows = padded[:, 0:w].copy()
    for dx in range(1, 2 * reach + 1):
        pick(rows, padded[:, dx : dx + w], out=rows)
    result = rows[0:h].copy()
    for dy in range(1, 2 * reach + 1):
        pick(result, rows[dy : dy + h], out=result)
    return result


def _window_max(values: np.ndarray, reach: int) -> np.ndarray:
    return _window_extreme(values, reach, np.maximum)


def _window_min(values: np.ndarray, reach: int) -> np.ndarray:
    return _window_extreme(values, reach, np.minimum)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _picture_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    low, high = round(0.75 * size), round(1.25 * size)
    width, height = (int(v) for v in rng.integers(low, high + 1, size=2))
    if width == height:  # never square: square inputs hide width/height mix-ups downstream
        height = height + 1 if height < high else height - 1
    return width, height


def _shape_outline(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of one shape (circles come back as their bounding box corners)."""
    angle = rng.uniform(0.0, math.pi)
    if kind == "circle":
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if kind == "rectangle":
        half_w, half_h = r, r * rng.uniform(0.45, 1.0)
        corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    elif kind == "ellipse":
        ratio = rng.uniform(0.4, 0.8)
        steps = np.linspace(0.0, 2 * math.pi, 28, endpoint=False)
        corners = list(zip(r * np.cos(steps), r * ratio * np.sin(steps)))
    else:  # triangle: jittered vertex angles and distances, so not always equilateral
        steps = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.35, 0.35, size=3)
        radii = r * rng.uniform(0.75, 1.15, size=3)
        corners = list(zip(radii * np.cos(steps), radii * np.sin(steps)))
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return [(cx + x * cos_a - y * sin_a, cy + x * sin_a + y * cos_a) for x, y in corners]


def make_layout(seed: int, index: int, size: int, classes: int, top_class: int, rare: int = 0) -> Layout:
    """The mask content of picture `index`; `top_class` is drawn last of the shapes, so it is always visible.
    With `rare`, the shapes take classes 1..classes-1-rare and the rare classes' objects go on top."""
    rng = _rng(seed, index, _LAYOUT)
    width, height = _picture_size(rng, size)
    short = min(width, height)
    count = int(rng.integers(2, 6))
    shape_classes = [int(c) for c in rng.integers(1, classes - rare, size=count - 1)] + [top_class]
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for j in range(1, count + 1):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        # The top shape is never smaller than a fair share of the picture, so its class survives the borders.
        r = max(short * rng.uniform(0.16, 0.28), 8.0) if j == count else short * rng.uniform(0.10, 0.28)
        cx = rng.uniform(0.12, 0.88) * width
        cy = rng.uniform(0.12, 0.88) * height
        outline = _shape_outline(rng, kind, cx, cy, r)
        if kind == "circle":
            draw.ellipse(outline, fill=j)
        else:
            draw.polygon(outline, fill=j)
    instances = np.asarray(canvas, dtype=np.uint8).copy()
    if not rare:
        return Layout(width, height, instances, np.array([0, *shape_classes], dtype=np.uint8))
    rare_classes = _draw_rare(_rng(seed, index, _RARE), draw, count, classes, rare, index, width, height)
    classes_of = np.array([0, *shape_classes, *rare_classes], dtype=np.uint8)
    return Layout(width, height, np.asarray(canvas, dtype=np.uint8).copy(), classes_of, shapes=instances)


def _draw_rare(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    count: int,
    classes: int,
    rare: int,
    index: int,
    width: int,
    height: int,
) -> list[int]:
    """Rare objects as instances count+1, ...: even rare classes a short stroke about short/16 pixels thick,
    odd ones one blob about short/8 pixels across (8 and 16 pixels at size 128: one or two cells at output
    stride 8). Returns their classes. Picture i always holds rare class number i mod rare."""
    short = min(width, height)
    drawn = []
    for k in range(rare):
        if k != index % rare and rng.uniform() >= RARE_PRESENCE:
            continue
        j = count + len(drawn) + 1
        if k % 2 == 0:
            length = short * rng.uniform(0.12, 0.25)
            angle = rng.uniform(0.0, math.pi)
            x0, y0 = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
            end = (x0 + length * math.cos(angle), y0 + length * math.sin(angle))
            draw.line([(x0, y0), end], fill=j, width=max(3, round(short / 16)))
        else:
            r = max(3.0, short * rng.uniform(0.05, 0.065))
            cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=j)
        drawn.append(classes - rare + k)
    return drawn


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-saturation colour, smooth blotches and a few faint clutter shapes: all class 0."""
    base = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.35, 0.8))
    # Blotches: mostly light and shade, a little colour, so the background stays greyish like a wall or sky.
    grid = rng.integers(0, 256, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 4), dtype=np.uint8)
    blotches = np.asarray(Image.fromarray(grid, "RGBA").resize((width, height), Image.BICUBIC), dtype=np.float32)
    blotches -= 128.0
    picture = base + blotches[:, :, 3:] * 0.45 + blotches[:, :, :3] * 0.12
    clutter = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(clutter)
    n_clutter = int(rng.integers(0, 4))
    for j in range(1, n_clutter + 1):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.uniform(4, width / 3), y0 + rng.uniform(2, height / 3)
        if rng.uniform() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=j)
        else:
            draw.line([x0, y0, x1, y1], fill=j, width=int(rng.integers(1, 4)))
    clutter_ids = np.asarray(clutter)
    for j in range(1, n_clutter + 1):
        inside = clutter_ids == j
        colour = _hsv(rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.2, 0.9))
        picture[inside] = 0.5 * picture[inside] + 0.5 * colour
    return picture


def _texture(kind: str, cls: int, rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Brightness modulation in [-1, 1] at the given pixels; the period and direction depend on the class."""
    period = 4.0 + 2.0 * (cls % 3) + rng.uniform(-0.5, 0.5)
    if kind == "plain":
        return np.zeros(ys.shape, dtype=np.float32)
    if kind == "stripes":
        theta = 0.7 * cls + rng.uniform(-0.2, 0.2)
        return np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * (2 * math.pi / period)).astype(np.float32)
    wave = np.sin(xs * (math.pi / period)) * np.sin(ys * (math.pi / period))
    if kind == "checks":
        return np.sign(wave).astype(np.float32)
    return (2.0 * np.clip(wave, 0.0, 1.0) - 1.0).astype(np.float32)  # dots


def render_picture(layout: Layout, seed: int, index: int, classes: int) -> np.ndarray:
    """The RGB picture (H, W, 3) uint8 that goes with `layout`."""
    rng = _rng(seed, index, _APPEARANCE)
    w, h = layout.width, layout.height
    picture = _background(rng, w, h)
    spacing = 1.0 / max(classes - 1, 1)  # each class owns a hue band; jitter stays inside it
    for j in range(1, len(layout.instance_classes)):
        cls = int(layout.instance_classes[j])
        colour = _hsv(
            (cls - 1) * spacing + rng.uniform(-0.22, 0.22) * spacing, rng.uniform(0.5, 0.95), rng.uniform(0.5, 0.95)
        )
        ys, xs = np.nonzero(layout.instances == j)
        modulation = 1.0 + 0.25 * _texture(TEXTURES[(cls - 1) % len(TEXTURES)], cls, rng, ys, xs)
        picture[ys, xs] = colour * modulation[:, None]
    # Uneven light across the picture, then sensor noise.
    gx, gy = rng.uniform(-0.2, 0.2, size=2)
    across = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    down = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    light = 1.0 + gx * across + gy * down
    picture *= light[:, :, None]
    # Uniform noise drawn as bytes costs a fifth of Gaussian noise; its shape does not matter here.
    picture += rng.integers(0, 32, size=(h, w, 3), dtype=np.uint8).astype(np.float32) - 15.5
    return np.clip(picture, 0, 255).astype(np.uint8)


def save_mask(mask: np.ndarray, path: Path) -> None:
    """An indexed (mode P) PNG with the VOC palette, like VOC's SegmentationClass files."""
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    image.putpalette(_PALETTE)
    image.save(path, format="PNG")


def _name(index: int) -> str:
    return f"img_{index + 1:05d}"


def _check_args(classes: int, size: int, seed: int, counts: dict[str, int], rare: int = 0) -> None:
    if not 2 <= classes <= MAX_CLASSES:
        raise ClientError(f"classes must be between 2 and {MAX_CLASSES}, got {classes}")
    if not 0 <= rare <= classes - 2:
        raise ClientError(
            f"rare must be between 0 and classes - 2 = {classes - 2} (background and one shape class stay common), "
            f"got {rare}"
        )
    if size < MIN_SIZE:
        raise ClientError(f"size must be at least {MIN_SIZE}, got {size}")
    if seed < 0:
        raise ClientError(f"seed must be >= 0, got {seed}")
    for what, n in counts.items():
        if n < 0:
            raise ClientError(f"{what} must be >= 0, got {n}")


def make_dataset(
    out: Path,
    classes: int = 5,
    train: int = 40,
    validation: int = 12,
    size: int = 160,
    seed: int = 0,
    rare: int = 0,
) -> dict[str, Any]:
    """Write train/, train_annotation/, validation/, validation_annotation/, label_map/ and classes.json.

    Same arguments, same bytes. Every class 1..classes-1 appears in the training set (and in the
    validation set when it has at least classes-1 pictures): picture i's top shape has class
    1 + i mod (classes-1-rare), and it holds rare class classes-rare + i mod rare. The summary's
    `pixel_share` is each class's share of the labelled training pixels.
    """
    out = Path(out)
    _check_args(classes, size, seed, {"train": train, "validation": validation}, rare)
    common = classes - 1 - rare
    if train < max(common, rare):
        raise ClientError(f"train must be at least {max(common, rare)} (every class appears in it), got {train}")
    splits = {"train": range(0, train), "validation": range(train, train + validation)}
    planned = {}
    for split, indices in splits.items():
        planned[out / split] = {f"{_name(i)}.jpg" for i in indices}
        planned[out / f"{split}_annotation"] = {f"{_name(i)}.png" for i in indices}
    prepare_output_dirs(planned)
    train_pixels = np.zeros(256, dtype=np.int64)
    for split, indices in splits.items():
        for local, index in enumerate(indices):
            layout = make_layout(seed, index, size, classes, top_class=1 + local % common, rare=rare)
            picture = render_picture(layout, seed, index, classes)
            Image.fromarray(picture).save(out / split / f"{_name(index)}.jpg", format="JPEG", quality=JPEG_QUALITY)
            mask = layout.mask()
            save_mask(mask, out / f"{split}_annotation" / f"{_name(index)}.png")
            if split == "train":
                train_pixels += np.bincount(mask.ravel(), minlength=256)
    label_maps = write_scale_label_maps(out)
    names = class_names(classes)
    (out / "classes.json").write_text(json.dumps(names, indent=1) + "\n")
    return {
        "out": str(out),
        "classes": classes,
        "class_names": names,
        "train": train,
        "validation": validation,
        "size": size,
        "seed": seed,
        "rare_classes": list(range(classes - rare, classes)),
        "pixel_share": [float(v) for v in train_pixels[:classes] / max(int(train_pixels[:classes].sum()), 1)],
        "channels": {
            "train": str(out / "train"),
            "train_annotation": str(out / "train_annotation"),
            "validation": str(out / "validation"),
            "validation_annotation": str(out / "validation_annotation"),
            "label_map": str(out / "label_map"),
        },
        "label_maps": label_maps,
        "classes_file": str(out / "classes.json"),
    }


def make_masks_only(
    out_dir: Path, count: int, size: int = 160, classes: int = 5, seed: int = 0, rare: int = 0
) -> list[Path]:
    """Write `count` annotation PNGs (img_00001.png, ...) and nothing else, for mask-decoding benchmarks.

    They are byte-identical to the first `count` training masks of `make_dataset` with the same
    size, classes, seed and rare.
    """
    out_dir = Path(out_dir)
    _check_args(classes, size, seed, {"count": count}, rare)
    names = [f"{_name(i)}.png" for i in range(count)]
    prepare_output_dirs({out_dir: set(names)})
    paths = []
    for index, name in enumerate(names):
        layout = make_layout(seed, index, size, classes, top_class=1 + index % (classes - 1 - rare), rare=rare)
        save_mask(layout.mask(), out_dir / name)
        paths.append(out_dir / name)
    return paths
