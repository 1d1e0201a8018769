"""Exact rewrites of the exported ONNX graph for one runtime, applied in memory at load (model.onnx stays as exported).

`split_large_dilations`: DeepLabV3's ASPP runs 3x3 convolutions with dilation 12, 24 and 36 on the
2048-channel feature map. OpenVINO's BF16 (AMX) kernel is pathologically slow on them: on an Intel Xeon
with AMX, those three took 0.79 s of DeepLabV3-R50's 0.89 s at 480x480, while the backbone's other 3x3
convolutions ran at AMX speed. The same convolution written as nine 1x1 convolutions, one per tap, over
shifted views of the zero-padded input, summed (plus the bias), is the same sum of products (up to float
rounding order) and runs on OpenVINO's fast 1x1 AMX path: DeepLabV3 BF16 went from 1.02 s to 0.39 s
there. The FP32 paths got slower with it (ONNX Runtime 1.7 -> 2.7 s), so it is used for OpenVINO BF16 only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LARGE_DILATION = 8  # the backbone's dilations (2, 4) stay as they are; ASPP's (12, 24, 36) are split
_TO_END = np.iinfo(np.int64).max


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _splittable(node: Any) -> int:
    """The dilation of a convolution this rewrite applies to, else 0."""
    if node.op_type != "Conv":
        return 0
    a = _attributes(node)
    dilation = a.get("dilations", [1, 1])
    if a.get("kernel_shape") != [3, 3] or dilation[0] != dilation[1] or dilation[0] < LARGE_DILATION:
        return 0
    if a.get("group", 1) != 1 or a.get("strides", [1, 1]) != [1, 1] or a.get("pads") != [dilation[0]] * 4:
        return 0
    return int(dilation[0])


def _end(tap: int, dilation: int) -> int:
    """Where tap 0, 1 or 2's view of the padded input ends: 2d, d or 0 before the padded end."""
    return (tap - 2) * dilation if tap < 2 else _TO_END


def split_large_dilations(model: Any) -> int:
    """Rewrite, in place, each 3x3 'same' convolution with dilation >= LARGE_DILATION; returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        d = _splittable(node)
        if not d or node.input[1] not in weights:
            nodes.append(node)
            continue
        count += 1
        name = node.name or node.output[0]
        kernel = numpy_helper.to_array(weights[node.input[1]])

        def constant(suffix: str, value: np.ndarray, prefix: str = name) -> str:
            graph.initializer.append(numpy_helper.from_array(value, f"{prefix}_{suffix}"))
            return f"{prefix}_{suffix}"

        padded = f"{name}_padded"
        nodes.append(helper.make_node("Pad", [node.input[0], constant("pads", np.array([0, 0, d, d] * 2))], [padded]))
        terms = []
        for i in range(3):
            for j in range(3):
                tap = f"{name}_tap{i}{j}"
                # Rows i*d .. end-(2-i)*d of the padded input: the input shifted by (i-1)*d, at the input's size.
                starts = constant("starts", np.array([i * d, j * d]), tap)
                ends = constant("ends", np.array([_end(i, d), _end(j, d)]), tap)
                axes = constant("axes", np.array([2, 3]), tap)
                nodes.append(helper.make_node("Slice", [padded, starts, ends, axes], [f"{tap}_in"]))
                weight = constant("weight", np.ascontiguousarray(kernel[:, :, i : i + 1, j : j + 1]), tap)
                nodes.append(helper.make_node("Conv", [f"{tap}_in", weight], [tap], kernel_shape=[1, 1]))
                terms.append(tap)
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(weights[node.input[2]]).astype(np.float32).reshape(1, -1, 1, 1)
            terms.append(constant("bias4d", bias))
        nodes.append(helper.make_node("Sum", terms, list(node.output), name=name))
    if count:
        used = {name for node in nodes for name in node.input}
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.node[:]
        graph.node.extend(nodes)
    return count
