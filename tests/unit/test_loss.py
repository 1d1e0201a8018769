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


# -- gluonseg extensions: class weights and OHEM (hand computations on tiny tensors)


def two_class_logits(p_true: list[float], label: list[int]) -> np.ndarray:
    """(1, 2, 1, W) logits whose softmax gives the true class (label) probability p_true at each pixel."""
    logits = np.zeros((1, 2, 1, len(p_true)), dtype=np.float32)
    for j, (p, y) in enumerate(zip(p_true, label, strict=True)):
        logits[0, y, 0, j] = np.log(p)
        logits[0, 1 - y, 0, j] = np.log(1 - p)
    return logits


def test_weighted_loss_is_the_weighted_mean_over_labelled_pixels_by_hand():
    p_true, label = [0.9, 0.5, 0.2, 0.6], [0, 1, 1, 0]
    logits = two_class_logits(p_true, label)
    y = np.array([[label]], dtype=np.float32)
    y[0, 0, 3] = IGNORE  # the 0.6 pixel does not count
    value = SegmentationLoss(class_weights=[1.0, 3.0])(mx.nd.array(logits), mx.nd.array(y)).asnumpy()
    # weights 1, 3, 3 on -log 0.9, -log 0.5, -log 0.2; divided by their sum, 7
    expected = (-np.log(0.9) - 3 * np.log(0.5) - 3 * np.log(0.2)) / 7
    np.testing.assert_allclose(value, [expected], rtol=1e-5)


def test_weighted_gradient_and_scale_invariance():
    main, aux, label = make_case(6)
    weights = [0.5, 2.0, 1.0, 4.0]
    value, gm, ga = run(SegmentationLoss(class_weights=weights), main, aux, label)
    value10, gm10, _ = run(SegmentationLoss(class_weights=[10 * w for w in weights]), main, aux, label)
    np.testing.assert_allclose(value, value10, rtol=1e-5)
    np.testing.assert_allclose(gm, gm10, rtol=1e-4, atol=1e-7)
    prob = np_softmax(main.astype(np.float64))
    expected_value, expected_grad = np.zeros(N), np.zeros_like(prob)
    for n in range(N):
        pixels = [(i, j) for i in range(H) for j in range(W) if label[n, i, j] != IGNORE]
        total = sum(weights[int(label[n, i, j])] for i, j in pixels)
        for i, j in pixels:
            y, w = int(label[n, i, j]), weights[int(label[n, i, j])]
            expected_value[n] += -w * np.log(prob[n, y, i, j]) / total
            expected_grad[n, :, i, j] = (prob[n, :, i, j] - np.eye(C)[y]) * w / total
    np.testing.assert_allclose(gm, expected_grad, rtol=1e-4, atol=1e-7)
    assert value[2] == 0.0 and not ga[2].any()  # nothing labelled: no loss, no gradient
    aux_value = SegmentationLoss(class_weights=weights)(mx.nd.array(aux), mx.nd.array(label)).asnumpy()
    np.testing.assert_allclose(value, expected_value + 0.5 * aux_value, rtol=1e-5)


def test_weights_all_equal_give_the_plain_loss():
    main, aux, label = make_case(7)
    plain, gm, ga = run(SegmentationLoss(), main, aux, label)
    ones, gm1, ga1 = run(SegmentationLoss(class_weights=[1.0] * C), main, aux, label)
    np.testing.assert_allclose(ones, plain, rtol=1e-6)
    np.testing.assert_allclose(gm1, gm, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ga1, ga, rtol=1e-5, atol=1e-8)


def test_ohem_keeps_pixels_below_the_threshold_by_hand():
    from gluonseg.training.loss import OHEM_THRESHOLD

    assert OHEM_THRESHOLD == 0.7
    p_true, label = [0.9, 0.8, 0.6, 0.3, 0.2], [0, 1, 0, 1, 0]
    y = np.array([[label]], dtype=np.float32)
    y[0, 0, 4] = IGNORE  # the hardest pixel is ignored, so not mined
    value = SegmentationLoss(ohem=True)(mx.nd.array(two_class_logits(p_true, label)), mx.nd.array(y)).asnumpy()
    np.testing.assert_allclose(value, [(-np.log(0.6) - np.log(0.3)) / 2], rtol=1e-5)


def test_ohem_keeps_at_least_the_hardest_fraction_by_hand():
    from gluonseg.training.loss import OHEM_MIN_KEPT_FRACTION

    assert OHEM_MIN_KEPT_FRACTION == 1 / 40
    # 80 labelled pixels, all easy (p >= 0.75): ceil(80 / 40) = 2 hardest are kept, 0.75 and 0.76.
    p_true = [0.75, 0.76] + [0.8 + 0.002 * k for k in range(78)]
    label = [k % 2 for k in range(80)]
    order = np.random.default_rng(0).permutation(80)  # position must not matter
    logits = two_class_logits([p_true[k] for k in order], [label[k] for k in order])
    y = np.array([[[label[k] for k in order]]], dtype=np.float32)
    value = SegmentationLoss(ohem=True)(mx.nd.array(logits), mx.nd.array(y)).asnumpy()
    np.testing.assert_allclose(value, [(-np.log(0.75) - np.log(0.76)) / 2], rtol=1e-5)
    # with class weights the kept pixels are averaged with their weights: 0.75 has class 0, 0.76 class 1
    value = SegmentationLoss(ohem=True, class_weights=[1.0, 4.0])(mx.nd.array(logits), mx.nd.array(y)).asnumpy()
    np.testing.assert_allclose(value, [(-np.log(0.75) - 4 * np.log(0.76)) / 5], rtol=1e-5)


def test_ohem_gradient_only_on_kept_pixels_and_each_head_mines_its_own():
    p_main, p_aux, label = [0.9, 0.8, 0.6, 0.3], [0.5, 0.95, 0.9, 0.99], [0, 1, 0, 1]
    main, aux = two_class_logits(p_main, label), two_class_logits(p_aux, label)
    y = np.array([[label]], dtype=np.float32)
    value, gm, ga = run(SegmentationLoss(ohem=True), main, aux, y)
    np.testing.assert_allclose(value, [(-np.log(0.6) - np.log(0.3)) / 2 + 0.5 * -np.log(0.5)], rtol=1e-5)
    assert not gm[..., :2].any() and gm[..., 2:].all()
    assert ga[..., 0].all() and not ga[..., 1:].any()
    # kept pixel 2 (label 0, p 0.6): d/dlogits of -log p / 2 = (softmax - onehot) / 2
    np.testing.assert_allclose(gm[0, :, 0, 2], [(0.6 - 1) / 2, 0.4 / 2], rtol=1e-5)


def test_negative_weights_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        SegmentationLoss(class_weights=[1.0, -1.0])
