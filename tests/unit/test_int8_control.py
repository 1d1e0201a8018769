"""Which convolutions of the INT8 model stay FP32 (int8_control): the groups, their multiply-adds, and the
search, driven here by a measured agreement that the test makes up per group."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from gluonseg.inference.int8_control import (
    control,
    conv_macs,
    end_convolutions,
    fallback_order,
    node_groups,
)


def conv_graph(specs: list[tuple[str, int]], side: int = 8, kernel: int = 1, stride: int = 1):
    """A chain of convolutions (name, output channels), as the exporter names GluonCV's layers."""
    nodes, inits, previous, channels = [], [], "data", 3
    for name, out in specs:
        weight = numpy_helper.from_array(np.zeros((out, channels, kernel, kernel), np.float32), f"{name}_weight")
        inits.append(weight)
        pad = kernel // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [previous, weight.name],
                [f"{name}_fwd"],
                name=f"{name}_fwd",
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )  # fmt: skip
        )
        previous, channels = f"{name}_fwd", out
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


FCN_LIKE = [
    ("fcn0_resnetv1s_conv0", 8),
    ("fcn0_resnetv1s_conv1", 8),
    ("fcn0_resnetv1s_layers1_conv0", 8),
    ("fcn0_resnetv1s_down1_conv0", 8),
    ("fcn0_resnetv1s_layers2_conv0", 8),
    ("fcn0_resnetv1s_layers3_conv0", 8),
    ("fcn0_resnetv1s_layers4_conv0", 16),
    ("fcn0_resnetv1s_layers4_conv1", 16),
    ("fcn0__fcnhead0_conv0", 8),
    ("fcn0__fcnhead0_conv1", 5),
]


def test_the_ends_are_the_first_convolution_and_the_classifier_and_groups_follow_gluoncv_names():
    model = conv_graph(FCN_LIKE)
    ends = end_convolutions(model, num_classes=5)
    assert ends == ["fcn0_resnetv1s_conv0_fwd", "fcn0__fcnhead0_conv1_fwd"]
    groups = node_groups(model, ends)
    assert list(groups) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert groups["stem"] == ["fcn0_resnetv1s_conv1_fwd"]  # the first convolution is an end, not stem
    assert groups["stage1"] == ["fcn0_resnetv1s_layers1_conv0_fwd", "fcn0_resnetv1s_down1_conv0_fwd"]
    assert groups["head"] == ["fcn0__fcnhead0_conv0_fwd"]  # the classifier is an end
    assert not any(end in nodes for nodes in groups.values() for end in ends)


def test_a_group_holds_every_node_of_its_region_not_only_its_convolutions():
    model = conv_graph(FCN_LIKE)
    nodes = list(model.graph.node)
    head_conv = next(i for i, n in enumerate(nodes) if n.name == "fcn0__fcnhead0_conv0_fwd")
    # a pooling in the head and a residual sum in stage 4, named as the exporter names them
    pool = helper.make_node("GlobalAveragePool", [nodes[head_conv].output[0]], ["pooled"], name="fcn0__fcnhead0_pool0")
    plus = helper.make_node("Add", ["x", "y"], ["sum"], name="fcn0_resnetv1s_layers4__plus0")
    del model.graph.node[:]
    model.graph.node.extend(
        [*nodes[: head_conv - 1], plus, *nodes[head_conv - 1 : head_conv + 1], pool, *nodes[head_conv + 1 :]]
    )
    groups = node_groups(model, end_convolutions(model, num_classes=5))
    assert groups["head"] == ["fcn0__fcnhead0_conv0_fwd", "fcn0__fcnhead0_pool0"]
    assert "fcn0_resnetv1s_layers4__plus0" in groups["stage4"]


def test_a_graph_without_stage_names_has_no_groups():
    model = conv_graph([("a", 8), ("b", 8), ("c", 3)])
    ends = end_convolutions(model, num_classes=3)
    assert ends == ["a_fwd", "c_fwd"] and node_groups(model, ends) == {}


def test_multiply_adds_follow_the_shapes_at_the_timing_side():
    # 3x3 stride-2 convolutions: 3->4 channels then 4->6, on 64x64: outputs 32x32 then 16x16
    model = conv_graph([("a", 4), ("b", 6)], kernel=3, stride=2)
    macs = conv_macs(model, side=64)
    assert macs == {"a_fwd": 4 * 3 * 9 * 32 * 32, "b_fwd": 6 * 4 * 9 * 16 * 16}


def test_fallback_order_is_gain_per_multiply_add_then_the_useless_smallest_first():
    gains = {"stage1": 0.002, "stage4": 0.004, "head": 0.0, "stem": -0.001}
    macs = {"stage1": 10, "stage4": 100, "head": 50, "stem": 5}
    assert fallback_order(gains, macs) == ["stage1", "stage4", "stem", "head"]


GROUPS = {"stem": ["s"], "stage1": ["l1"], "stage2": ["l2"], "stage4": ["l4"], "head": ["h"]}
MACS = {"first": 1, "cls": 1, "s": 8, "l1": 10, "l2": 20, "l4": 40, "h": 20}  # total 100


def measured(base: float, gain: dict[str, float], method_gain: dict[str, float] | None = None):
    """An agreement that rises by `gain[node]` for each node kept FP32 (and by method_gain[method]); counts calls."""
    calls: list[list[str]] = []

    def measure(nodes: list[str], method: str) -> dict:
        calls.append(nodes)
        return {"agreement": base + (method_gain or {}).get(method, 0.0) + sum(gain.get(n, 0.0) for n in nodes)}

    return measure, calls


def test_the_ends_alone_are_kept_when_they_reach_the_bar():
    measure, calls = measured(0.996, {})
    outcome = control(["first", "cls"], GROUPS, MACS, measure, bar=0.995)
    assert outcome.kept["fp32_groups"] == [] and calls == [["first", "cls"]]
    assert outcome.kept["fp32_mac_share"] == 0.02 and outcome.kept["calibration"] == "MinMax"


def test_a_second_calibration_method_is_tried_at_the_ends_before_any_group_goes_back_to_fp32():
    # MinMax's ranges miss the bar by a point; Entropy's reach it with every stage INT8
    measure, calls = measured(0.986, {"h": 0.001}, {"Entropy": 0.012})
    outcome = control(["first", "cls"], GROUPS, MACS, measure, bar=0.995)
    assert [a["calibration"] for a in outcome.attempts] == ["MinMax", "Entropy"]
    assert outcome.kept["calibration"] == "Entropy" and outcome.kept["fp32_groups"] == []
    # neither reaches it: the groups are searched with the method that came closest
    measure, calls = measured(0.980, {"l1": 0.006}, {"Entropy": 0.010})
    outcome = control(["first", "cls"], GROUPS, MACS, measure, bar=0.995)
    assert outcome.kept["fp32_groups"] == ["stage1"] and outcome.kept["calibration"] == "Entropy"
    assert {a["calibration"] for a in outcome.attempts[2:]} == {"Entropy"}


def test_the_cheapest_single_group_that_reaches_the_bar_wins_over_the_fixed_head_first_order():
    # the head (20%) and stage1 (10%) each reach the bar alone; stage1 costs half as many FP32 multiply-adds
    measure, calls = measured(0.990, {"h": 0.006, "l1": 0.0055, "l4": 0.001})
    outcome = control(["first", "cls"], GROUPS, MACS, measure, bar=0.995)
    assert outcome.kept["fp32_groups"] == ["stage1"] and outcome.kept["purpose"] == "sensitivity"
    assert len(calls) == 2 + len(GROUPS)  # the ends with each method, then each group once
    assert outcome.sensitivity["head"] == 0.006 and outcome.sensitivity["stem"] == 0.0


def test_groups_are_added_by_gain_per_multiply_add_until_the_bar():
    # no group alone is enough; stage2 buys the most per multiply-add, then stage1, then stage4
    measure, calls = measured(0.980, {"l2": 0.008, "l1": 0.003, "l4": 0.006, "s": 0.0})
    outcome = control(["first", "cls"], GROUPS, MACS, measure, bar=0.995)
    assert outcome.order[:3] == ["stage2", "stage1", "stage4"]
    # stage2 + stage1 = 0.991, + stage4 = 0.997: 72% of the multiply-adds FP32, over the 50% limit
    assert outcome.kept is None and "50%" in outcome.why_not
    assert all(a["fp32_mac_share"] <= 0.5 for a in outcome.attempts)
    # with a looser limit the same search keeps all three, and nothing more
    measure, _ = measured(0.980, {"l2": 0.008, "l1": 0.003, "l4": 0.006, "s": 0.0})
    outcome = control(["first", "cls"], GROUPS, MACS, measure, bar=0.995, max_share=0.8)
    assert outcome.kept["fp32_groups"] == ["stage2", "stage1", "stage4"]
    assert outcome.kept["fp32_nodes"] == ["first", "cls", "l2", "l1", "l4"]
    assert abs(outcome.kept["agreement"] - 0.997) < 1e-9 and outcome.kept["purpose"] == "fallback"


def test_without_groups_a_failing_ends_attempt_says_why():
    measure, calls = measured(0.99, {})
    outcome = control(["a", "c"], {}, {"a": 1, "c": 1}, measure, bar=0.995)
    assert outcome.kept is None and len(calls) == 2 and "no stages" in outcome.why_not
