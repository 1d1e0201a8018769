"""A few of the job's own pictures kept in the model folder, so that a model is judged on pictures like the user's.

Training writes `check/` into the model folder (small enough for model.tar.gz: at most CHECK_PICTURES pictures,
each scaled down to CHECK_MAX_PIXELS):
- `check/images/<n>.jpg`: the picture as the model would be sent it (RGB JPEG);
- `check/labels/<n>.png`: its label-mapped mask at the same size (8-bit, 255 = ignore), when it has one;
- `check/check.json`: where they came from (`validation` or `training`, the channel files' names).
Serving's `auto` holds every backend and precision to agreement with MXNet FP32 on them
(gluonseg.inference.backend_choice), and the INT8 export checks itself on them while it calibrates on other
pictures (gluonseg.inference.int8_onnx). A model folder without `check/` (made before, or by Pipe mode) is
judged on generated pictures, and the log says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gluonseg.data.channels import Sample

CHECK_DIR = "check"
CHECK_RECORD = "check.json"
CHECK_PICTURES = 8
CHECK_MAX_PIXELS = 512 * 512
JPEG_QUALITY = 92
CALIBRATION_PICTURES = 16
MIN_CALIBRATION_PICTURES = 4


@dataclass(frozen=True)
class CheckPicture:
    name: str
    picture: np.ndarray  # HxWx3 uint8
    label: np.ndarray | None  # HxW uint8 (255: ignore), None when the pictures came without masks


@dataclass(frozen=True)
class PicturePlan:
    """Which of the job's pictures check a model and which calibrate its INT8 ranges: never the same ones."""

    check_source: str  # "validation" or "training"
    check: list[Sample]
    calibration_source: str
    calibration: list[Sample]
    note: str | None = None  # said in the log and the INT8 record when the plan had to make do


def plan_pictures(validation: Sequence[Sample], training: Sequence[Sample]) -> PicturePlan:
    """Check pictures from the validation channel (at most half of it, up to CHECK_PICTURES), calibration
    pictures from the rest of it; from the training pictures where the validation channel has too few."""
    note = None
    if len(validation) >= 2:
        check_source, pool = "validation", list(validation)
    else:
        check_source, pool = "training", list(training)
        note = "no validation pictures (fewer than 2): the check pictures are training pictures"
    check_at = spread(len(pool), min(CHECK_PICTURES, len(pool) // 2))
    check = [pool[i] for i in check_at]
    rest = [s for i, s in enumerate(pool) if i not in set(check_at)]
    calibration_source = check_source
    if len(rest) < MIN_CALIBRATION_PICTURES and check_source == "validation":
        calibration_source, rest = "training", list(training)
        note = (
            f"the validation channel has {len(validation)} pictures: {len(check)} check the model, and the "
            "calibration pictures are training pictures"
        )
    calibration = [rest[i] for i in spread(len(rest), CALIBRATION_PICTURES)]
    return PicturePlan(check_source, check, calibration_source, calibration, note)


def spread(count: int, wanted: int) -> list[int]:
    """`wanted` indices spread evenly over range(count) (all of them when there are no more)."""
    if count <= wanted:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, wanted).round()})


def _scaled_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    if height * width <= max_pixels:
        return height, width
    ratio = (max_pixels / (height * width)) ** 0.5
    return max(1, int(height * ratio)), max(1, int(width * ratio))


def write_check_set(
    model_dir: Path,
    load: Callable[[int], tuple[np.ndarray, np.ndarray]],
    indices: Sequence[int],
    names: Sequence[str],
    source: str,
) -> Path:
    """Write `check/` from the pairs `load(i)` gives (HxWx3 uint8 picture, HxW uint8 label-mapped mask).

    Written beside and moved in whole, so a reader never sees half a check set.
    """
    model_dir = Path(model_dir)
    final = model_dir / CHECK_DIR
    scratch = Path(tempfile.mkdtemp(dir=model_dir, prefix=".check-"))
    try:
        (scratch / "images").mkdir()
        (scratch / "labels").mkdir()
        kept = []
        for number, index in enumerate(indices):
            picture, mask = load(index)
            height, width = _scaled_size(picture.shape[0], picture.shape[1], CHECK_MAX_PIXELS)
            image = Image.fromarray(np.ascontiguousarray(picture))
            label = Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8)), mode="L")
            if (height, width) != picture.shape[:2]:
                image = image.resize((width, height), Image.BILINEAR)
                label = label.resize((width, height), Image.NEAREST)
            stem = f"{number:02d}"
            image.save(scratch / "images" / f"{stem}.jpg", quality=JPEG_QUALITY)
            label.save(scratch / "labels" / f"{stem}.png")
            kept.append({"file": stem, "from": names[index], "size": [width, height]})
        (scratch / CHECK_RECORD).write_text(json.dumps({"source": source, "pictures": kept}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def read_check_record(model_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(model_dir) / CHECK_DIR / CHECK_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_check_set(model_dir: Path) -> list[CheckPicture]:
    """The model folder's check pictures in order, with their labels; [] when it has none."""
    folder = Path(model_dir) / CHECK_DIR
    if read_check_record(model_dir) is None:
        return []
    found = []
    for path in sorted((folder / "images").glob("*.jpg")):
        with Image.open(path) as image:
            picture = np.asarray(image.convert("RGB"))
        label_path = folder / "labels" / f"{path.stem}.png"
        label = None
        if label_path.exists():
            with Image.open(label_path) as mask:
                label = np.asarray(mask)
        found.append(CheckPicture(path.stem, picture, label))
    return found
