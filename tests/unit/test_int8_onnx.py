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


def test_calibration_takes_pictures_of_different_sizes_with_every_method(tmp_path):
    # native-scale canvases differ in size; ONNX Runtime's histogram calibrators fail on a pass that mixes sizes
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gluonseg.inference.int8_onnx import calibrate
    from gluonseg.inference.onnx_ops import INPUT_NAME

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", [INPUT_NAME, "w"], ["out"], name="conv", pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, "h", "w"])],
        [weight],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    rng = np.random.default_rng(1)
    items = [
        Canvas(f"p{i}", rng.standard_normal((3, h, w)).astype(np.float32), h, w, None)
        for i, (h, w) in enumerate([(16, 24), (32, 8), (8, 8)])
    ]
    for method in ("MinMax", "Entropy", "Percentile"):
        ranges = calibrate(path, items, tmp_path, method)
        low, high = ranges["out"].range_value
        assert float(low) < 0 < float(high), method  # the output's range, over all three pictures
    # passes merge: the input's range spans every picture's, not the last one's
    minmax = calibrate(path, items, tmp_path, "MinMax")
    assert float(minmax[INPUT_NAME].range_value[0]) == min(float(i.data.min()) for i in items)
    assert float(minmax[INPUT_NAME].range_value[1]) == max(float(i.data.max()) for i in items)
