"""TensorBoard event files from a real training job, read back with TensorBoard's own reader (issue #25)."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gluonseg.data.channels import pair_channel
from gluonseg.data.dataset import SegmentationDataset
from gluonseg.palette import class_names
from gluonseg.training.tensorboard import FOLDER, PICTURES, open_board, overlay
from tests.support.e2e_jobs import TINY, job_tree, run_train

METRIC = re.compile(r"#quality_metric: host=algo-1, epoch=(\d+), (.+?) <[^>]+>=(\S+)")
TAGS = {
    "train loss": "train/loss",
    "train throughput": "train/throughput",
    "validation pixel_accuracy": "validation/pixel_accuracy",
    "validation mIOU": "validation/mIOU",
    "validation throughput": "validation/throughput",
}


@pytest.fixture(scope="module")
def board_job(tmp_path_factory, generated_dataset):
    base = job_tree(tmp_path_factory.mktemp("board-job"), generated_dataset, {**TINY, "epochs": 2})
    proc = run_train(base)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(base / "checkpoints", ignore_errors=True)
    events = EventAccumulator(str(base / "output" / FOLDER), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return base, proc.stdout + proc.stderr, events


def test_every_metric_line_is_a_scalar_of_the_same_value_and_epoch(board_job):
    _, log, events = board_job
    lines = METRIC.findall(log)
    assert len(lines) == 2 * len(TAGS)
    for epoch, name, value in lines:
        (point,) = (s for s in events.Scalars(TAGS[name]) if s.step == int(epoch))
        assert point.value == pytest.approx(float(value), rel=1e-5), (name, epoch)


def test_learning_rate_and_per_class_iou_are_there_for_each_epoch(board_job):
    base, log, events = board_job
    scalars = events.Tags()["scalars"]
    assert [s.step for s in events.Scalars("train/learning_rate")] == [0, 1]
    assert all(0 < s.value <= float(TINY["learning_rate"]) for s in events.Scalars("train/learning_rate"))
    names = class_names(TINY["num_classes"])
    per_class = sorted(tag for tag in scalars if tag.startswith("validation_IoU/"))
    assert per_class and set(per_class) <= {f"validation_IoU/{n}" for n in names}
    assert "validation_IoU/background" in per_class  # every validation mask has background
    assert f"TensorBoard event files: {base / 'output' / FOLDER}" in log and "tensorboard --logdir" in log


def test_validation_pictures_show_the_picture_the_prediction_and_the_truth(board_job, generated_dataset):
    _, _, events = board_job
    tags = sorted(events.Tags()["images"])
    assert tags == [f"validation_pictures/{i}" for i in range(PICTURES)]
    samples = pair_channel(generated_dataset / "validation", generated_dataset / "validation_annotation")
    dataset = SegmentationDataset(samples, mode="val_whole")
    for index, tag in enumerate(tags):
        shots = events.Images(tag)
        assert [s.step for s in shots] == [0, 1]  # the first epoch and the last
        picture, truth = dataset.load(index)
        height, width = truth.shape
        for shot in shots:
            assert (shot.width, shot.height) == (3 * width, height)
            row = np.asarray(Image.open(io.BytesIO(shot.encoded_image_string)).convert("RGB"))
            assert row.shape == (height, 3 * width, 3)
            np.testing.assert_array_equal(row[:, :width], picture)
            np.testing.assert_array_equal(row[:, 2 * width :], overlay(picture, truth, TINY["num_classes"]))


def test_off_on_another_host_or_with_tensorboard_false(tmp_path: Path):
    assert open_board(False, True, tmp_path, 4, 2, None) is None
    assert open_board(True, False, tmp_path, 4, 2, None) is None
    assert not (tmp_path / FOLDER).exists()
    board = open_board(True, True, tmp_path, 4, 2, None)
    assert board is not None and (tmp_path / FOLDER).is_dir() and not board.wants_pictures(0)
    board.close()
