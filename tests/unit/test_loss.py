"""The training loss: its value, and the gradient it really sends to each head."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from gluoncv.loss import MixSoftmaxCrossEntropyLoss
from mxnet import autograd

from gluonseg.training.loss import SegmentationLoss

N, C, H, W = 3, 4, 3, 5
IGNORE = 255


def make_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    main = rng.normal(size=(N, C, H, W)).astype(np.float32) * 2
    aux = rng.normal(size=(N, C, H, W)).astype(np.float32) * 2
    label = rng.integers(0, C, size=(N, H, W)).astype(np.float32)
    label[0, 0, :] = IGNORE  # a partly ignored sample
    label[1, 1, 2] = IGNORE
    label[2] = IGNORE  # a sample with no labelled pixel at all
    return main, aux, label


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_reference_loss(logits: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per-sample mean of -log p(label) over labelled pixels, written with plain loops."""
    prob = np_softmax(logits.astype(np.float64))
    out = np.zeros(logits.shape[0])
    for n in range(logits.shape[0]):
        terms = [
            -np.log(prob[n, int(label[n, i, j]), i, j])
            for i in range(logits.shape[2])
            for j in range(logits.shape[3])
            if label[n, i, j] != IGNORE
        ]
        out[n] = np.mean(terms) if terms else 0.0
    return out


def np_reference_grad(logits: np.ndarray, label: np.ndarray, weight: float) -> np.ndarray:
    """d(sum of per-sample losses)/d logits = (softmax - onehot) * weight / valid_count, 0 where ignored."""
    prob = np_softmax(logits.astype(np.float64))
    grad = np.zeros_like(prob)
    for n in range(logits.shape[0]):
        valid = label[n] != IGNORE
        count = valid.sum()
        for i, j in zip(*np.nonzero(valid), strict=True):
            onehot = np.eye(logits.shape[1])[int(label[n, i, j])]
            grad[n, :, i, j] = (prob[n, :, i, j] - onehot) * weight / count
    return grad


def run(loss_fn, main: np.ndarray, aux: np.ndarray, label: np.ndarray):
    """Loss value and the gradients wrt both heads' logits (loss.backward() as in the training loop)."""
    pm, pa = mx.nd.array(main), mx.nd.array(aux)
    pm.attach_grad()
    pa.attach_grad()
    with autograd.record():
        loss = loss_fn((pm, pa), mx.nd.array(label))
    loss.backward()
    return loss.asnumpy(), pm.grad.asnumpy(), pa.grad.asnumpy()


def test_value_matches_numpy_reference():
    main, aux, label = make_case()
    value, _, _ = run(SegmentationLoss(aux_weight=0.5), main, aux, label)
    assert value.shape == (N,)
    expected = np_reference_loss(main, label) + 0.5 * np_reference_loss(aux, label)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert value[2] == 0.0  # no labelled pixel: no loss, and no division by zero


def test_aux_weight_scales_the_aux_gradient_and_only_that():
    main, aux, label = make_case(1)
    _, gm_half, ga_half = run(SegmentationLoss(aux_weight=0.5), main, aux, label)
    _, gm_one, ga_one = run(SegmentationLoss(aux_weight=1.0), main, aux, label)
    assert np.abs(ga_one).max() > 0.01
    np.testing.assert_allclose(ga_half, 0.5 * ga_one, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(gm_half, gm_one)


def test_gradients_equal_hand_computed_softmax_minus_onehot():
    main, aux, label = make_case(2)
    _, gm, ga = run(SegmentationLoss(aux_weight=0.5), main, aux, label)
    np.testing.assert_allclose(gm, np_reference_grad(main, label, 1.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ga, np_reference_grad(aux, label, 0.5), rtol=1e-5, atol=1e-7)


def test_ignored_pixels_get_zero_gradient():
    main, aux, label = make_case(3)
    _, gm, ga = run(SegmentationLoss(), main, aux, label)
    ignored = np.broadcast_to((label == IGNORE)[:, None], gm.shape)
    assert ignored.any() and (~ignored).any()
    assert not gm[ignored].any() and not ga[ignored].any()
    assert gm[~ignored].any()
    assert np.isfinite(gm).all() and np.isfinite(ga).all()


def test_single_output_and_zero_weight():
    main, aux, label = make_case(4)
    only_main = SegmentationLoss()(mx.nd.array(main), mx.nd.array(label)).asnumpy()
    np.testing.assert_allclose(only_main, np_reference_loss(main, label), rtol=1e-5)
    # Weight 0 still puts the aux head in the graph (zero gradient, not a stale one).
    value, _, ga = run(SegmentationLoss(aux_weight=0.0), main, aux, label)
    np.testing.assert_allclose(value, np_reference_loss(main, label), rtol=1e-5)
    assert not ga.any()


def test_shape_mismatch_is_refused():
    main, aux, label = make_case()
    with pytest.raises(ValueError, match="do not match"):
        SegmentationLoss()((mx.nd.array(main),), mx.nd.array(label[:, :2]))


def test_gluoncv_mix_loss_does_not_scale_the_aux_gradient():
    """Documents why we do not use GluonCV's loss (measured on gluoncv 0.10.5 / mxnet 1.9.1).

    MixSoftmaxCrossEntropyLoss builds on SoftmaxOutput, whose backward ignores the incoming gradient:
    the aux head's gradient is the same for aux_weight 0.5 and 1.0, namely (softmax - onehot)
    divided by the labelled-pixel count of the whole batch (not of each sample).
    """
    main, aux, label = make_case(5)
    gluoncv_label = np.where(label == IGNORE, -1, label).astype(np.float32)  # its ignore label is -1
    value_half, _, ga_half = run(
        lambda o, y: MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=0.5)(o[0], o[1], y), main, aux, gluoncv_label
    )
    value_one, _, ga_one = run(
        lambda o, y: MixSoftmaxCrossEntropyLoss(aux=True, aux_weight=1.0)(o[0], o[1], y), main, aux, gluoncv_label
    )
    assert not np.allclose(value_half, value_one)  # the printed value does change ...
    np.testing.assert_array_equal(ga_half, ga_one)  # ... the gradient does not

    valid = label != IGNORE
    batch_count = valid.sum()
    prob = np_softmax(aux.astype(np.float64))
    onehot = np.zeros_like(prob)
    for n, i, j in zip(*np.nonzero(valid), strict=True):
        onehot[n, int(label[n, i, j]), i, j] = 1
    expected = (prob - onehot) * valid[:, None] / batch_count
    np.testing.assert_allclose(ga_half, expected, rtol=1e-5, atol=1e-7)
