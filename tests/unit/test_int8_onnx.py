"""The INT8 step's measures: agreement and mIoU (int8_onnx); which convolutions stay FP32: test_int8_control."""

from __future__ import annotations

import numpy as np

from gluonseg.inference.int8_onnx import Canvas, agreement, mean_iou


def test_agreement_and_miou_count_the_pixels_and_ignore_255():
    reference = [np.array([[0, 1], [1, 1]], np.uint8)]
    masks = [np.array([[0, 1], [0, 1]], np.uint8)]
    assert agreement(masks, reference) == 0.75
    label = np.array([[0, 1], [255, 1]], np.uint8)
    item = Canvas("x", np.zeros((3, 8, 8), np.float32), 2, 2, label)
    # ignoring the 255 pixel, the masks match the label everywhere: both classes IoU 1
    assert mean_iou(masks, [item], num_classes=3) == 1.0
    wrong = [np.array([[1, 1], [0, 0]], np.uint8)]  # class 0: 0/2, class 1: 1/3
    assert abs(mean_iou(wrong, [item], num_classes=3) - (0 + 1 / 3) / 2) < 1e-9
    assert mean_iou(masks, [Canvas("y", item.data, 2, 2, None)], num_classes=3) is None
