"""File-mode training channels: pair images with masks, and check every pair before training starts.

The scan is the guard against the most common mistake with this algorithm: masks whose values are
not class ids (colour masks, 0/255 binary masks, a wrong `num_classes`). It reads every mask once and
every image's header (format, size, the pixel bound) in the same pass, reports every problem at once
(first 20 files, then a count) under the channel it is in, and runs before any model is built.
Files are named as the user uploaded them: channel-relative, with their extension
(`validation_annotation/2012_000013.png`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from gluonseg.data.images import image_size, load_mask
from gluonseg.data.label_map import IGNORE, LabelMap
from gluonseg.errors import ClientError, list_with_limit

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS = (".png",)
SPLITS = {"train": ("train", "train_annotation"), "validation": ("validation", "validation_annotation")}


class Sample(NamedTuple):
    name: str  # the path relative to its channel folder, without extension: "2012_000013", "sub/x"
    image_path: Path
    mask_path: Path

    @property
    def image_file(self) -> str:
        """`train/2012_000013.jpg`: how messages name the image."""
        return channel_file(self.image_path, self.name)

    @property
    def mask_file(self) -> str:
        """`train_annotation/2012_000013.png`: how messages name the mask."""
        return channel_file(self.mask_path, self.name)


def channel_file(path: Path, key: str) -> str:
    """A channel's file as the user knows it: `<channel>/<path in the channel>` with its extension.

    `key` is the path relative to the channel folder without extension, so the folder is the parent
    that many levels up."""
    depth = len(PurePosixPath(key).parts)
    if len(path.parts) <= depth:
        return str(path)
    return f"{path.parents[depth - 1].name}/{key}{path.suffix}"


def shown_name(root: Path, path: Path) -> str:
    """`<channel>/<path in the channel>` for a file under the channel folder `root`."""
    return f"{root.name}/{path.relative_to(root).as_posix()}"


def visible_files(root: Path, extensions: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """Files under root (nested folders walked, hidden files and folders skipped), keyed by their
    path relative to root without extension. Returns (files, other_files)."""
    found: dict[str, Path] = {}
    others: list[str] = []
    duplicates: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            rel = path.relative_to(root)
            if path.suffix.lower() not in extensions:
                others.append(shown_name(root, path))
                continue
            key = rel.with_suffix("").as_posix()
            if key in found:
                duplicates.append(f"{shown_name(root, found[key])} and {shown_name(root, path)}")
            found[key] = path
    if duplicates:
        raise ClientError(
            f"In the channel '{root.name}', several files share a base name, so the pairing with masks is "
            "ambiguous: " + list_with_limit(duplicates)
        )
    return found, others


def pair_channel(image_dir: Path, mask_dir: Path) -> list[Sample]:
    """Pair `X.jpg|.jpeg|.png` in image_dir with `X.png` in mask_dir by relative base name."""
    for channel_dir in (image_dir, mask_dir):
        if not channel_dir.is_dir():
            raise ClientError(f"The channel '{channel_dir.name}' is missing: no folder {channel_dir}")
    images, other_images = visible_files(image_dir, IMAGE_EXTENSIONS)
    masks, other_masks = visible_files(mask_dir, MASK_EXTENSIONS)
    problems = []
    if not images:
        extra = f" (found only: {list_with_limit(other_images, 5)})" if other_images else ""
        problems.append(f"The channel '{image_dir.name}' holds no images (.jpg, .jpeg or .png) in {image_dir}{extra}")
    if not masks:
        extra = f" (found only: {list_with_limit(other_masks, 5)})" if other_masks else ""
        problems.append(f"The channel '{mask_dir.name}' holds no PNG masks in {mask_dir}{extra}")
    if problems:
        raise ClientError("; ".join(problems))
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} image(s) in '{image_dir.name}' have no mask of the same name in "
            f"'{mask_dir.name}': " + list_with_limit([shown_name(image_dir, images[k]) for k in lonely_images])
        )
    if lonely_masks:
        problems.append(
            f"{len(lonely_masks)} mask(s) in '{mask_dir.name}' have no image of the same name in "
            f"'{image_dir.name}': " + list_with_limit([shown_name(mask_dir, masks[k]) for k in lonely_masks])
        )
    if problems:
        raise ClientError("; ".join(problems))
    return [Sample(key, images[key], masks[key]) for key in sorted(images)]


@dataclass
class PairReport:
    """What the scan found in one image/mask pair."""

    name: str
    image_problem: str | None = None  # unreadable header, other format, too many pixels
    mask_problem: str | None = None  # unreadable, wrong mode, wrong size
    bad_values: tuple[int, ...] = ()  # raw pixel values that map outside 0..num_classes-1 and 255
    histogram: np.ndarray | None = None  # class-id pixel counts after mapping (256 bins)


def _scan_one(sample: Sample, lut: np.ndarray, num_classes: int) -> PairReport:
    image_file, mask_file = sample.image_file, sample.mask_file
    report = PairReport(sample.name)
    size = None
    try:
        size = image_size(sample.image_path, image_file)
    except ClientError as exc:
        report.image_problem = str(exc)
    try:
        mask = load_mask(sample.mask_path, mask_file)
    except ClientError as exc:
        report.mask_problem = str(exc)
        return report
    if size is not None and mask.shape != (size[1], size[0]):
        width, height = size
        hint = ""
        if mask.shape == (width, height):
            hint = " (the image may carry an EXIF rotation; masks must match the stored pixel grid)"
        report.mask_problem = (
            f"{mask_file}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_file} is {width}x{height}{hint}"
        )
        return report
    raw_counts = np.bincount(mask.ravel(), minlength=256)
    present = np.flatnonzero(raw_counts)
    mapped = lut[present]
    report.bad_values = tuple(int(v) for v in present[(mapped >= num_classes) & (mapped != IGNORE)])
    report.histogram = np.bincount(mapped, weights=raw_counts[present], minlength=256).astype(np.int64)
    return report


def _scan_chunk(args: tuple[list[Sample], np.ndarray, int]) -> list[PairReport]:
    samples, lut, num_classes = args
    return [_scan_one(s, lut, num_classes) for s in samples]


@dataclass
class ClassPixels:
    """Labelled-pixel counts of a set of masks per class id 0..num_classes-1 (255 excluded): the class
    weights' input, gathered by the scan at no extra read."""

    pixels: np.ndarray  # int64: pixels of the class
    image_pixels: np.ndarray  # int64: labelled pixels of the masks that hold the class (median frequency's)

    def stacked(self) -> np.ndarray:
        """Both as one (2, num_classes) array, to be summed over hosts; `from_stacked` reverses it."""
        return np.stack([self.pixels, self.image_pixels])

    @classmethod
    def from_stacked(cls, values: np.ndarray) -> ClassPixels:
        values = np.asarray(values, dtype=np.int64)
        return cls(values[0].copy(), values[1].copy())


@dataclass
class ScanResult:
    count: int
    class_pixels: np.ndarray  # pixels per class id after mapping, 256 bins (255 = ignore)
    class_image_pixels: np.ndarray  # per class id: labelled pixels of the masks holding it, 256 bins

    def classes_present(self, num_classes: int) -> list[int]:
        return [c for c in range(num_classes) if self.class_pixels[c] > 0]

    def class_counts(self, num_classes: int) -> ClassPixels:
        return ClassPixels(self.class_pixels[:num_classes].copy(), self.class_image_pixels[:num_classes].copy())


def scan_masks(
    samples: Sequence[Sample], label_map: LabelMap, num_classes: int, channel: str, workers: int | None = None
) -> ScanResult:
    """Read every mask and every image's header once; raise one ClientError listing every bad file and
    value, each under its own channel (`channel` names the masks' channel)."""
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    chunks = _chunks(list(samples), workers * 4)
    if workers > 1 and len(samples) >= 200:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reports = [
                r for part in pool.map(_scan_chunk, [(c, label_map.lut, num_classes) for c in chunks]) for r in part
            ]
    else:
        reports = [r for c in chunks for r in _scan_chunk((c, label_map.lut, num_classes))]

    problems = []
    bad_images = [r.image_problem for r in reports if r.image_problem]
    if bad_images:
        image_channel = samples[0].image_file.split("/")[0]
        problems.append(
            f"{len(bad_images)} image(s) in '{image_channel}' cannot be used: " + list_with_limit(bad_images)
        )
    bad_masks = [r.mask_problem for r in reports if r.mask_problem]
    if bad_masks:
        problems.append(f"{len(bad_masks)} mask(s) in '{channel}' cannot be used: " + list_with_limit(bad_masks))
    bad_values = _bad_values_problem(samples, reports, label_map, num_classes, channel)
    if bad_values:
        problems.append(bad_values)
    if problems:
        raise ClientError("; ".join(problems))
    total = np.zeros(256, dtype=np.int64)
    image_pixels = np.zeros(256, dtype=np.int64)
    for r in reports:
        total += r.histogram
        labelled = int(r.histogram.sum() - r.histogram[IGNORE])
        image_pixels += np.where(r.histogram > 0, labelled, 0)
    image_pixels[IGNORE] = 0
    return ScanResult(count=len(reports), class_pixels=total, class_image_pixels=image_pixels)


def _bad_values_problem(
    samples: Sequence[Sample], reports: list[PairReport], label_map: LabelMap, num_classes: int, channel: str
) -> str | None:
    """The sentence for masks holding values that are not classes, or None. After a label map, each
    value is given as in the file and as the class it became."""
    files = {s.name: s.mask_file for s in samples}
    by_value: dict[int, list[str]] = defaultdict(list)
    for r in reports:
        for v in r.bad_values:
            by_value[v].append(files[r.name])
    if not by_value:
        return None
    names = sorted({n for found in by_value.values() for n in found})
    if label_map.is_identity:
        values, mapping = ", ".join(str(v) for v in sorted(by_value)), ""
    else:
        values = ", ".join(f"{v} (mapped to class {int(label_map.lut[v])})" for v in sorted(by_value))
        mapping = f" after applying the label map {label_map.describe()}"
    return (
        f"{len(names)} mask(s) in '{channel}' hold values outside 0..{num_classes - 1} and 255 (ignore){mapping}: "
        f"values {values} in "
        + list_with_limit(names)
        + f". Masks must hold class ids 0..num_classes-1 (num_classes={num_classes}); "
        "use the label_map channel to map other pixel values, or raise num_classes"
    )


def _chunks(items: list, parts: int) -> list[list]:
    parts = max(1, min(parts, len(items)))
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


def required_channels_present(available: Iterable[str]) -> None:
    missing = [c for pair in SPLITS.values() for c in pair if c not in set(available)]
    if missing:
        raise ClientError(
            "Missing required channel(s): "
            + ", ".join(f"'{c}'" for c in missing)
            + "; File mode needs 'train', 'train_annotation', 'validation' and 'validation_annotation'"
        )
