"""ConfusionMatrix: hand-computed cases and agreement with GluonCV's SegmentationMetric."""

from __future__ import annotations

import json
import math

import mxnet as mx
import numpy as np
import pytest
from gluoncv.utils.metrics import SegmentationMetric

from gluonseg.metrics import ConfusionMatrix


def test_hand_computed_two_by_three():
    # label      pred
    # 0 0 1      0 1 1
    # 1 2 255    1 0 2
    label = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, label)
    # Rows = truth, cols = prediction; the 255 pixel is dropped whatever was predicted there.
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    assert cm.matrix.dtype == np.int64
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    # class 0: inter 1, union |{t=0}|=2 + |{p=0}|=2 - 1 = 3; class 1: 2 / (2+3-2)=2/3; class 2: 0 / (1+0-0)
    np.testing.assert_allclose(cm.iou_per_class(), [1 / 3, 2 / 3, 0.0])
    assert cm.mean_iou() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert cm.mean_iou_present() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_absent_class_is_nan_per_class_zero_in_miou():
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 0])
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    iou = cm.iou_per_class()
    assert iou[0] == pytest.approx(2 / 3)  # inter 2, union 2 + 3 - 2
    assert iou[1] == pytest.approx(1 / 2)  # inter 1, union 2 + 1 - 1
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.mean_iou() == pytest.approx((2 / 3 + 1 / 2) / 4)
    assert cm.mean_iou_present() == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_class_only_predicted_counts_as_present_with_iou_zero():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 2]), np.array([0, 0]))
    iou = cm.iou_per_class()
    assert iou[0] == pytest.approx(1 / 2)
    assert iou[2] == 0.0
    assert math.isnan(iou[1])
    assert cm.mean_iou_present() == pytest.approx(1 / 4)


def test_labels_at_or_above_num_classes_and_negative_are_excluded():
    cm = ConfusionMatrix(3, ignore_index=255)
    label = np.array([0, 3, 7, 255, -1, 2], dtype=np.int64)
    pred = np.array([0, 1, 1, 2, 2, 2])
    cm.update(pred, label)
    assert cm.labelled_pixels == 2
    assert cm.correct_pixels == 2
    assert cm.pixel_accuracy() == 1.0


def test_custom_ignore_index():
    cm = ConfusionMatrix(3, ignore_index=0)
    cm.update(np.array([1, 1, 2]), np.array([0, 1, 1]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0, 0], [0, 1, 1], [0, 0, 0]])


def test_empty_matrix_scores():
    cm = ConfusionMatrix(2)
    assert cm.pixel_accuracy() == 0.0
    assert cm.mean_iou() == 0.0
    assert math.isnan(cm.mean_iou_present())
    cm.update(np.array([1, 1]), np.array([255, 255], dtype=np.uint8))  # all ignored
    assert cm.labelled_pixels == 0


def test_uint8_labels_do_not_overflow_with_many_classes():
    # label * C + pred overflows uint8 unless the implementation widens first.
    c = 200
    label = np.array([199, 150, 3], dtype=np.uint8)
    pred = np.array([199, 3, 3], dtype=np.uint8)
    cm = ConfusionMatrix(c)
    cm.update(pred, label)
    assert cm.matrix[199, 199] == 1 and cm.matrix[150, 3] == 1 and cm.matrix[3, 3] == 1
    assert cm.labelled_pixels == 3


def test_shape_mismatch_and_bad_prediction_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="out of range"):
        cm.update(np.array([3]), np.array([0]))


def test_accepts_ndarrays_and_any_shape():
    label = np.random.RandomState(0).randint(0, 3, size=(2, 1, 4, 5))
    pred = np.random.RandomState(1).randint(0, 3, size=(2, 1, 4, 5))
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(mx.nd.array(pred), mx.nd.array(label))
    b.update(pred.reshape(-1), label.reshape(-1))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.labelled_pixels == 40


def test_merge_equals_single_accumulation_and_reset():
    rng = np.random.RandomState(2)
    batches = [(rng.randint(0, 4, (3, 7)), rng.randint(0, 4, (3, 7))) for _ in range(4)]
    whole, w1, w2 = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    for i, (p, t) in enumerate(batches):
        whole.update(p, t)
        (w1 if i % 2 else w2).update(p, t)
    merged = ConfusionMatrix(4).merge(w1).add(w2)
    np.testing.assert_array_equal(merged.matrix, whole.matrix)
    w1 += w2
    np.testing.assert_array_equal(w1.matrix, whole.matrix)
    with pytest.raises(ValueError):
        whole.merge(ConfusionMatrix(5))
    whole.reset()
    assert whole.labelled_pixels == 0


def test_state_dict_round_trip_through_json():
    rng = np.random.RandomState(3)
    cm = ConfusionMatrix(5, ignore_index=254)
    cm.update(rng.randint(0, 5, (10, 10)), rng.randint(0, 5, (10, 10)))
    state = json.loads(json.dumps(cm.state_dict()))
    back = ConfusionMatrix.from_state_dict(state)
    assert back.num_classes == 5 and back.ignore_index == 254
    np.testing.assert_array_equal(back.matrix, cm.matrix)
    assert back.mean_iou() == cm.mean_iou()
    bad = dict(state, matrix=[[0, 1], [2, 3]])
    with pytest.raises(ValueError):
        ConfusionMatrix.from_state_dict(bad)


def _gluoncv_inputs(pred: np.ndarray, label: np.ndarray, num_classes: int):
    """GluonCV wants scores (N, C, H, W) whose argmax is the prediction, and -1 for ignore."""
    scores = np.eye(num_classes, dtype=np.float32)[pred].transpose(0, 3, 1, 2)
    gluon_label = label.astype(np.float32)
    gluon_label[label == 255] = -1
    return mx.nd.array(scores), mx.nd.array(gluon_label)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_gluoncv_segmentation_metric(seed):
    rng = np.random.RandomState(seed)
    num_classes = 7
    ours = ConfusionMatrix(num_classes)
    theirs = SegmentationMetric(num_classes)
    for batch in range(4):
        n, h, w = 2, 9 + batch, 11
        # Only classes 0..4 ever appear in labels, and 0..3 plus 5 in predictions: class 6 is absent
        # everywhere (IoU 0 in GluonCV's mean), class 4 only in labels, class 5 only in predictions.
        label = rng.randint(0, 5, size=(n, h, w)).astype(np.uint8)
        pred = rng.choice([0, 1, 2, 3, 5], size=(n, h, w))
        # Bias towards correct predictions so IoUs are not all tiny.
        agree = rng.rand(n, h, w) < 0.5
        pred[agree & (label != 4)] = label[agree & (label != 4)]
        label[rng.rand(n, h, w) < 0.15] = 255  # ignore pixels
        if batch == 1:
            label[0] = 255  # a wholly ignored image
        ours.update(pred, label)
        scores, gluon_label = _gluoncv_inputs(pred, label, num_classes)
        theirs.update(gluon_label, scores)  # GluonCV's order: labels, preds
        pix_acc, miou = theirs.get()
        assert ours.pixel_accuracy() == pytest.approx(pix_acc, abs=1e-6)
        assert ours.mean_iou() == pytest.approx(miou, abs=1e-6)
    iou = ours.iou_per_class()
    assert math.isnan(iou[6]) and iou[4] == 0.0 and iou[5] == 0.0
    assert ours.mean_iou_present() == pytest.approx(ours.mean_iou() * 7 / 6)
