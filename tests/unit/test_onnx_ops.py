"""The ONNX translations of resize and adaptive pooling follow the input's size exactly as MXNet computes."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
from onnx import TensorProto, helper

from gluonseg.inference.onnx_ops import size_following_translations


def export(symbol: mx.sym.Symbol, full_size: tuple[int, int], path, channels: int = 3) -> ort.InferenceSession:
    with size_following_translations(full_size):
        graph = MXNetGraph().create_onnx_graph_proto(
            symbol,
            {},
            [(1, channels, *full_size)],
            [TensorProto.FLOAT],
            opset_version=13,
            dynamic=True,
            dynamic_input_shapes=[(None, channels, None, None)],
        )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("size", [(12, 18), (7, 11), (6, 6), (13, 5)])
def test_adaptive_pooling_bins_equal_mxnets_at_sizes_the_output_does_not_divide(tmp_path, size):
    data = mx.sym.var("data")
    pooled = mx.sym.contrib.AdaptiveAvgPooling2D(data, output_size=(3, 6))
    session = export(pooled, (12, 18), tmp_path / "pool.onnx")
    x = np.random.default_rng(1).standard_normal((2, 3, *size)).astype(np.float32)
    ours = session.run(None, {"data": x})[0]
    theirs = mx.nd.contrib.AdaptiveAvgPooling2D(mx.nd.array(x), output_size=(3, 6)).asnumpy()
    assert ours.shape == theirs.shape == (2, 3, 3, 6)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_resize_targets_follow_the_input_picture(tmp_path):
    # Like GluonCV's heads: features at 1/8 of the picture, pooled, resized back to the feature size, and
    # logits resized to the picture's size. The crop was 16x16: targets 16x16 and 2x2 in the graph.
    data = mx.sym.var("data")
    features = mx.sym.Pooling(data, kernel=(8, 8), stride=(8, 8), pool_type="avg")
    pooled = mx.sym.contrib.AdaptiveAvgPooling2D(features, output_size=1)
    branch = mx.sym.contrib.BilinearResize2D(pooled, height=2, width=2)
    logits = mx.sym.contrib.BilinearResize2D(features + branch, height=16, width=16)
    session = export(logits, (16, 16), tmp_path / "resize.onnx")
    for h, w in [(16, 16), (40, 24), (8, 64)]:
        x = np.random.default_rng(h).standard_normal((1, 3, h, w)).astype(np.float32)
        f = mx.nd.Pooling(mx.nd.array(x), kernel=(8, 8), stride=(8, 8), pool_type="avg")
        p = mx.nd.contrib.AdaptiveAvgPooling2D(f, output_size=1)
        b = mx.nd.contrib.BilinearResize2D(p, height=h // 8, width=w // 8)
        expected = mx.nd.contrib.BilinearResize2D(f + b, height=h, width=w).asnumpy()
        ours = session.run(None, {"data": x})[0]
        assert ours.shape == (1, 3, h, w)
        np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_a_resize_not_derived_from_the_input_is_refused(tmp_path):
    data = mx.sym.var("data")
    odd = mx.sym.contrib.BilinearResize2D(data, height=5, width=7)
    with pytest.raises(NotImplementedError, match="not derived from the input"):
        export(odd, (16, 16), tmp_path / "odd.onnx")


def test_the_exporter_gets_its_own_translations_back(tmp_path):
    registry = MXNetGraph.registry_[12]
    before = registry["_contrib_AdaptiveAvgPooling2D"]
    data = mx.sym.var("data")
    export(mx.sym.contrib.AdaptiveAvgPooling2D(data, output_size=2), (8, 8), tmp_path / "p.onnx")
    assert registry["_contrib_AdaptiveAvgPooling2D"] is before


def run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"data": x})[0]


@pytest.mark.parametrize(("dilation", "size"), [(12, (20, 30)), (8, (9, 7)), (36, (60, 44))])
def test_large_dilations_split_into_taps_compute_the_same_convolution(dilation, size):
    from onnx import numpy_helper

    from gluonseg.inference.onnx_rewrites import split_large_dilations

    rng = np.random.default_rng(dilation)
    weights = {
        "w": rng.standard_normal((5, 6, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
        "w2": rng.standard_normal((5, 5, 3, 3)).astype(np.float32),
    }
    wide = dict(kernel_shape=[3, 3], dilations=[dilation] * 2, pads=[dilation] * 4)
    conv = helper.make_node("Conv", ["data", "w", "b"], ["c"], **wide)
    kept = helper.make_node("Conv", ["c", "w2"], ["out"], kernel_shape=[3, 3], dilations=[2, 2], pads=[2] * 4)
    graph = helper.make_graph(
        [conv, kept],
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 6, None, None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5, None, None])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((1, 6, *size)).astype(np.float32)
    before = run(model, x)
    assert split_large_dilations(model) == 1  # the dilation-2 convolution is left alone
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("Conv") == 10
    assert "w" not in {t.name for t in model.graph.initializer}
    np.testing.assert_allclose(run(model, x), before, rtol=1e-5, atol=1e-4)
