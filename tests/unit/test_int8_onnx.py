"""The INT8 step's pure parts: which convolutions stay FP32 at each attempt, agreement and mIoU (int8_onnx)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from gluonseg.inference.int8_onnx import Canvas, agreement, fp32_attempts, mean_iou


def conv_graph(specs: list[tuple[str, int]]):
    """A chain of convolutions (name, output channels), as the exporter names GluonCV's layers."""
    nodes, inits, previous, channels = [], [], "data", 3
    for name, out in specs:
        weight = numpy_helper.from_array(np.zeros((out, channels, 1, 1), np.float32), f"{name}_weight")
        inits.append(weight)
        nodes.append(helper.make_node("Conv", [previous, weight.name], [f"{name}_fwd"], name=f"{name}_fwd"))
        previous, channels = f"{name}_fwd", out
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph)


def test_attempts_grow_from_the_ends_to_the_head_then_the_last_stage():
    model = conv_graph(
        [
            ("fcn0_resnetv1s_conv0", 8),
            ("fcn0_resnetv1s_layers3_conv0", 8),
            ("fcn0_resnetv1s_layers4_conv0", 8),
            ("fcn0_resnetv1s_layers4_conv1", 16),
            ("fcn0__fcnhead0_conv0", 8),
            ("fcn0__fcnhead0_conv1", 5),
        ]
    )
    first, classifier, head = "fcn0_resnetv1s_conv0_fwd", "fcn0__fcnhead0_conv1_fwd", "fcn0__fcnhead0_conv0_fwd"
    stage4 = {"fcn0_resnetv1s_layers4_conv0_fwd", "fcn0_resnetv1s_layers4_conv1_fwd"}
    attempts = fp32_attempts(model, num_classes=5)
    assert attempts[0] == [first, classifier]
    assert set(attempts[1]) == {first, classifier, head}
    assert set(attempts[2]) == {first, classifier, head} | stage4
    assert "fcn0_resnetv1s_layers3_conv0_fwd" not in attempts[2]


def test_a_graph_without_stage_names_gets_the_ends_only():
    attempts = fp32_attempts(conv_graph([("a", 8), ("b", 8), ("c", 3)]), num_classes=3)
    assert attempts == [["a_fwd", "c_fwd"]]


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
