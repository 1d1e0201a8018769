"""Class weights from the training masks (the scan's counts), their statistics, and the job's loss choice."""

from __future__ import annotations

import numpy as np
import pytest

from gluonseg.data.channels import ClassPixels, pair_channel, scan_masks
from gluonseg.data.inputs import TrainingInputs
from gluonseg.data.label_map import LabelMap
from gluonseg.errors import ClientError
from gluonseg.hyperparameters import parse
from gluonseg.training.class_weights import (
    MAX_WEIGHT,
    class_stats,
    describe,
    inverse_frequency,
    median_frequency,
    resolve_weights,
)
from gluonseg.training.distributed.single_host import SingleHost
from gluonseg.training.setup import make_loss
from tests.support.helpers import write_image, write_mask


def mask(counts: dict[int, int], width: int = 5) -> np.ndarray:
    """A mask holding `counts[v]` pixels of each value v (row-major), width 5."""
    values = np.concatenate([np.full(n, v, dtype=np.uint8) for v, n in counts.items()])
    return values.reshape(-1, width)


def scanned_counts(tmp_path) -> ClassPixels:
    """Two masks: A holds 12 x class 0, 4 x class 1, 4 ignored; B holds 10 x class 0, 2 x class 2, 8 ignored."""
    for name, values in (("a", mask({0: 12, 1: 4, 255: 4})), ("b", mask({0: 10, 255: 8, 2: 2}))):
        write_image(tmp_path / "img" / f"{name}.jpg", 5, 4)
        write_mask(tmp_path / "ann" / f"{name}.png", values)
    samples = pair_channel(tmp_path / "img", tmp_path / "ann")
    return scan_masks(samples, LabelMap.identity(), 3, "train_annotation", workers=1).class_counts(3)


def test_scan_counts_exclude_the_ignore_pixels(tmp_path):
    counts = scanned_counts(tmp_path)
    assert counts.pixels.tolist() == [22, 4, 2]
    # labelled pixels of the masks holding each class: class 0 in both (16 + 12), 1 in A (16), 2 in B (12)
    assert counts.image_pixels.tolist() == [28, 16, 12]


def test_inverse_frequency_equals_the_hand_computation(tmp_path):
    # 28 labelled pixels, 3 classes present: w_c = 28 / (3 x pixels_c)
    weights = resolve_weights("inverse_frequency", scanned_counts(tmp_path))
    np.testing.assert_allclose(weights, [28 / 66, 28 / 12, 28 / 6])


def test_median_frequency_equals_the_hand_computation(tmp_path):
    # g = 22/28, 4/16, 2/12; median 1/4; w_c = (1/4) / g_c
    weights = resolve_weights("median_frequency", scanned_counts(tmp_path))
    np.testing.assert_allclose(weights, [7 / 22, 1.0, 1.5])


def test_weights_are_capped_and_an_absent_class_gets_zero():
    counts = ClassPixels(np.array([100_000, 7, 0]), np.array([100_007, 100_007, 0]))
    assert MAX_WEIGHT == 10.0
    inverse = inverse_frequency(counts)
    np.testing.assert_allclose(inverse, [100_007 / 200_000, MAX_WEIGHT, 0.0])
    median = median_frequency(counts)
    assert median[1] == MAX_WEIGHT and median[2] == 0.0 and median[0] < 1


def test_a_list_is_used_as_given_and_none_means_the_plain_loss():
    assert resolve_weights("none", None) is None
    np.testing.assert_array_equal(resolve_weights((1.0, 0.0, 5.0), None), [1.0, 0.0, 5.0])


def test_frequency_weights_need_the_scan():
    with pytest.raises(ClientError, match="class_weights=median_frequency is computed from the training masks"):
        resolve_weights("median_frequency", None)
    with pytest.raises(ClientError, match="no labelled pixel"):
        resolve_weights("inverse_frequency", ClassPixels(np.zeros(3, np.int64), np.zeros(3, np.int64)))


def test_stats_hold_the_share_rare_classes_and_weights(tmp_path):
    counts = scanned_counts(tmp_path)
    weights = resolve_weights("median_frequency", counts)
    stats = class_stats(["bg", "a", "b"], counts, "median_frequency", weights, "ohem")
    np.testing.assert_allclose(stats["pixel_share"], [22 / 28, 4 / 28, 2 / 28])
    assert stats["pixels"] == [22, 4, 2] and stats["rare_classes"] == []
    assert stats["weights"] == pytest.approx([7 / 22, 1.0, 1.5]) and stats["weight_cap"] == MAX_WEIGHT
    rare = class_stats(["bg", "a"], ClassPixels(np.array([999, 1]), np.array([1000, 1000])), (1.0, 2.0), None, "x")
    assert rare["rare_classes"] == [1] and rare["weight_cap"] is None and rare["class_weights"] == [1.0, 2.0]
    lines = describe(stats)
    assert "bg 78.5714%" in lines[0] and lines[-1] == "class weights (median_frequency): [0.318182, 1, 1.5]; loss: ohem"


def inputs_with(counts: ClassPixels | None, per_host: bool = False) -> TrainingInputs:
    return TrainingInputs(
        "file", LabelMap.identity(), LabelMap.identity(), train_pixels=counts, train_pixels_per_host=per_host
    )


def test_a_job_with_neither_key_gets_the_built_in_loss(tmp_path, caplog):
    caplog.set_level("INFO")
    hp = parse({"num_classes": "3", "num_training_samples": "2"})
    loss, stats = make_loss(hp, inputs_with(scanned_counts(tmp_path)), SingleHost())
    assert loss.class_weights is None and loss.ohem is False  # SegmentationLoss then is pixel_cross_entropy
    assert stats["weights"] is None and stats["pixels"] == [22, 4, 2]
    assert "class weights (none): none; loss: cross_entropy" in caplog.text


def test_shard_counts_are_summed_over_hosts_before_the_weights(tmp_path):
    class TwoHosts(SingleHost):
        """Another host with the very same shard: the job's counts are twice this host's."""

        def sum_counts(self, name, values):
            return 2 * np.asarray(values)

    hp = parse({"num_classes": "3", "num_training_samples": "2", "class_weights": "median_frequency", "loss": "ohem"})
    counts = scanned_counts(tmp_path)
    loss, stats = make_loss(hp, inputs_with(counts, per_host=True), TwoHosts())
    assert stats["pixels"] == [44, 8, 4] and loss.ohem is True
    np.testing.assert_allclose(loss.class_weights.asnumpy(), [7 / 22, 1.0, 1.5], rtol=1e-6)
    _, replicated = make_loss(hp, inputs_with(counts, per_host=False), TwoHosts())
    assert replicated["pixels"] == [22, 4, 2]  # every host scanned the whole set: nothing to sum
