"""TensorBoard event files for every training job, where SageMaker looks for them: `/opt/ml/output/tensorboard`.

That is the folder an Estimator's `TensorBoardOutputConfig` syncs to S3 (`gluonseg train` writes it under its
output folder and logs the `tensorboard --logdir` line). Written by tensorboardX (no hand-made event framing),
on the first host only, unless `tensorboard=False`:
- per epoch (step = epoch, 0-based as the metric lines): `train/loss`, `train/learning_rate`,
  `train/throughput` (samples/s), `validation/mIOU`, `validation/pixel_accuracy`, `validation/throughput`,
  and `validation_IoU/<class>` for every class the validation masks or predictions have;
- at the first epoch, every IMAGE_EVERY-th and the last: `validation_pictures/<n>`, for the first
  PICTURES validation pictures, the picture | the predicted mask over it | the true mask over it, in the
  job's palette (ignored pixels, 255, left uncoloured).
A job resumed from a checkpoint appends to the same folder (TensorBoard reads every event file in it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from gluonseg.data.dataset import SegmentationDataset
from gluonseg.data.transforms import normalize
from gluonseg.palette import blend, class_names, voc_palette

log = logging.getLogger("gluonseg.train")

FOLDER = "tensorboard"
PICTURES = 3
IMAGE_EVERY = 5
MAX_SIDE = 320  # pictures are scaled down to this for the event file (it is synced to S3 every few minutes)
ALPHA = 0.5


def overlay(picture: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """HxWx3 uint8: the classes' VOC colours blended over `picture` (gluonseg.palette.blend, as `predict` draws
    them); ignored pixels (255, or anything past the classes) left as they are, like background."""
    return blend(picture, np.where(mask < num_classes, mask, 0), voc_palette(), ALPHA)


def _scaled(picture: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    height, width = mask.shape
    ratio = MAX_SIDE / max(height, width)
    if ratio >= 1:
        return picture, mask
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    small = np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))
    return small, np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))


class TrainingBoard:
    """The job's event file writer (see the module docstring); `None`-safe: `open_board` returns None when off."""

    def __init__(self, folder: Path, num_classes: int, epochs: int, pictures: SegmentationDataset | None) -> None:
        from tensorboardX import SummaryWriter

        self.folder = folder
        self.num_classes = num_classes
        self.names = class_names(num_classes)
        self.epochs = epochs
        self.pictures = pictures
        self.writer = SummaryWriter(str(folder), flush_secs=30)

    def epoch(self, record: dict[str, Any], learning_rate: float) -> None:
        step = int(record["epoch"])
        scalars = {
            "train/loss": record["train_loss"],
            "train/learning_rate": learning_rate,
            "train/throughput": record["train_throughput"],
            "validation/mIOU": record["mIOU"],
            "validation/pixel_accuracy": record["pixel_accuracy"],
            "validation/throughput": record["validation_throughput"],
        }
        for name, value in zip(self.names, record.get("iou_per_class") or []):
            if value is not None:
                scalars[f"validation_IoU/{name}"] = value
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def wants_pictures(self, epoch: int) -> bool:
        last = epoch == self.epochs - 1
        return self.pictures is not None and (epoch % IMAGE_EVERY == 0 or last)

    def validation_pictures(self, epoch: int, net: Any, ctx: mx.Context) -> None:
        """The first PICTURES validation pictures with predicted and true masks (see the module docstring)."""
        from gluonseg.training.validation import whole_image_logits

        assert self.pictures is not None
        for index in range(min(PICTURES, len(self.pictures))):
            picture, truth = _scaled(*self.pictures.load(index))  # predicted at the shown size: a view, not a score
            data = mx.nd.array(normalize(picture)[None], ctx=ctx)
            predicted = whole_image_logits(net, data).argmax(axis=1)[0].asnumpy().astype(np.uint8)
            shown = [picture, overlay(picture, predicted, self.num_classes), overlay(picture, truth, self.num_classes)]
            row = np.concatenate(shown, axis=1)
            self.writer.add_image(f"validation_pictures/{index}", row, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(
    enabled: bool, primary: bool, output_dir: Path, num_classes: int, epochs: int, pictures: Sequence | None
) -> TrainingBoard | None:
    """The job's board, or None when off (tensorboard=False), on another host, or when the folder is unusable."""
    if not enabled or not primary:
        return None
    folder = Path(output_dir) / FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        board = TrainingBoard(folder, num_classes, epochs, pictures)
    except OSError as exc:  # the metric lines and the model matter more than the event files
        log.warning("TensorBoard: cannot write event files to %s (%s); training goes on without them", folder, exc)
        return None
    log.info("TensorBoard event files: %s (view: tensorboard --logdir %s)", folder, folder)
    return board
