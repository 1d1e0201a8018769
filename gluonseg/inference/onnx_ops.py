"""ONNX translations of the two GluonCV operators whose stock MXNet exporter loses the input's size.

MXNet's ONNX exporter (mx.onnx, 1.9.1) writes `_contrib_BilinearResize2D` with the target size as a
constant, and refuses `_contrib_AdaptiveAvgPooling2D` unless the output is 1x1 (PSP's pyramid pools to
1, 2, 3 and 6). Inside `size_following_translations()` both are translated so that the model follows
the input it is given (spec gluoncv-notes §3.3, gluonseg.inference.shape_graphs for the same rewrite in
MXNet):

- a resize whose target is (crop, crop) becomes "to the input picture's (H, W)", and one whose target is
  (crop/8, crop/8) becomes "to (H/8, W/8)", H and W read from the graph input at run time (the
  backbone's output stride is 8, so inputs must be multiples of 8, as the Predictor's canvases are);
  linear, align_corners, as MXNet's operator computes;
- adaptive average pooling to (Oh, Ow) becomes, for each output cell (i, j), the mean of the input
  rows floor(i*H/Oh) .. ceil((i+1)*H/Oh) and the same for columns (MXNet's bins, overlapping where
  the size does not divide), with H, W read from the pooled tensor at run time.

So one file serves every input size; with a fixed input shape ONNX Runtime and OpenVINO fold these
shape computations into constants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

RESIZE_OP = "_contrib_BilinearResize2D"
POOL_OP = "_contrib_AdaptiveAvgPooling2D"
OUTPUT_STRIDE = 8
INPUT_NAME = "data"
EXPORTER_OPSETS = (12, 13)  # what MXNet 1.9.1's exporter translates to


def _const(initializer: list, name: str, values: list[int]) -> str:
    from onnx import numpy_helper

    initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    return name


def _dims(init: list, shape: str, start: int, end: int, out: str) -> Any:
    """A Slice node taking dimensions start..end-1 of the shape tensor `shape` into `out`."""
    from onnx.helper import make_node

    return make_node("Slice", [shape, _const(init, out + "_from", [start]), _const(init, out + "_to", [end])], [out])


def _inputs(node: dict, kwargs: dict) -> list[str]:
    lookup = kwargs["outputs_lookup"]
    return [lookup[i[0]][i[1]].name for i in node["inputs"]]


def _int_pair(text: str) -> tuple[int, int]:
    values = [int(v) for v in str(text).strip("()[] ").replace(",", " ").split()]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def resize_translation(full_size: tuple[int, int]) -> Callable[..., list]:
    """A converter for `_contrib_BilinearResize2D` whose targets are `full_size` or full_size/8 (see above)."""
    full_h, full_w = full_size
    stride_size = (full_h // OUTPUT_STRIDE, full_w // OUTPUT_STRIDE)

    def convert(node: dict, **kwargs: Any) -> list:
        from onnx.helper import make_node

        name = node["name"]
        (source,) = _inputs(node, kwargs)[:1]
        attrs = node.get("attrs", {})
        if attrs.get("mode", "size") != "size":
            raise NotImplementedError(f"{name}: resize mode {attrs.get('mode')!r} is not exported")
        if str(attrs.get("align_corners", "True")).lower() not in ("true", "1"):
            raise NotImplementedError(f"{name}: only align_corners resizes are exported")
        target = (int(attrs.get("height", 0)), int(attrs.get("width", 0)))
        if target == (full_h, full_w):
            divisor = 1
        elif target == stride_size:
            divisor = OUTPUT_STRIDE
        else:
            raise NotImplementedError(f"{name}: resize target {target} is not derived from the input {full_size}")
        init = kwargs["initializer"]
        nodes = [
            make_node("Shape", [source], [name + "_src_shape"]),
            _dims(init, name + "_src_shape", 0, 2, name + "_nc"),
            make_node("Shape", [INPUT_NAME], [name + "_in_shape"]),
            _dims(init, name + "_in_shape", 2, 4, name + "_in_hw"),
        ]
        hw = name + "_in_hw"
        if divisor != 1:
            nodes.append(make_node("Div", [hw, _const(init, name + "_stride", [divisor])], [name + "_hw"]))
            hw = name + "_hw"
        nodes.append(make_node("Concat", [name + "_nc", hw], [name + "_sizes"], axis=0))
        from onnx import numpy_helper

        init.append(numpy_helper.from_array(np.zeros(0, dtype=np.float32), name + "_roi"))
        init.append(numpy_helper.from_array(np.zeros(0, dtype=np.float32), name + "_scales"))
        nodes.append(
            make_node(
                "Resize",
                [source, name + "_roi", name + "_scales", name + "_sizes"],
                [name],
                name=name,
                mode="linear",
                coordinate_transformation_mode="align_corners",
            )
        )
        return nodes

    return convert


def adaptive_pool_translation(node: dict, **kwargs: Any) -> list:
    """`_contrib_AdaptiveAvgPooling2D` to (Oh, Ow) as per-bin Slice + ReduceMean, bins from the input's size."""
    from onnx.helper import make_node

    name = node["name"]
    (source,) = _inputs(node, kwargs)[:1]
    out_h, out_w = _int_pair(node.get("attrs", {}).get("output_size", "1"))
    init = kwargs["initializer"]
    if (out_h, out_w) == (1, 1):
        return [make_node("GlobalAveragePool", [source], [name], name=name)]
    nodes = [
        make_node("Shape", [source], [name + "_shape"]),
        _dims(init, name + "_shape", 2, 3, name + "_h"),
        _dims(init, name + "_shape", 3, 4, name + "_w"),
    ]

    def bounds(axis: str, count: int) -> list[tuple[str, str]]:
        """[(start, end)] tensors of each bin along one axis: floor(i*n/count), ceil((i+1)*n/count)."""
        size = f"{name}_{axis}"
        out = []
        for i in range(count):
            start, end = f"{name}_{axis}{i}_start", f"{name}_{axis}{i}_end"
            nodes.append(make_node("Mul", [size, _const(init, f"{start}_k", [i])], [start + "_num"]))
            nodes.append(make_node("Div", [start + "_num", _const(init, f"{start}_d", [count])], [start]))
            # ceil(a/b) = (a + b - 1) / b for non-negative integers
            nodes.append(make_node("Mul", [size, _const(init, f"{end}_k", [i + 1])], [end + "_num"]))
            nodes.append(make_node("Add", [end + "_num", _const(init, f"{end}_r", [count - 1])], [end + "_up"]))
            nodes.append(make_node("Div", [end + "_up", _const(init, f"{end}_d", [count])], [end]))
            out.append((start, end))
        return out

    rows, cols = bounds("h", out_h), bounds("w", out_w)
    axes = _const(init, name + "_axes", [2, 3])
    row_outputs = []
    for i, (row_start, row_end) in enumerate(rows):
        cells = []
        for j, (col_start, col_end) in enumerate(cols):
            cell = f"{name}_cell{i}_{j}"
            nodes.append(make_node("Concat", [row_start, col_start], [cell + "_starts"], axis=0))
            nodes.append(make_node("Concat", [row_end, col_end], [cell + "_ends"], axis=0))
            nodes.append(make_node("Slice", [source, cell + "_starts", cell + "_ends", axes], [cell + "_bin"]))
            nodes.append(make_node("GlobalAveragePool", [cell + "_bin"], [cell]))
            cells.append(cell)
        row = f"{name}_row{i}"
        nodes.append(make_node("Concat", cells, [row], axis=3))
        row_outputs.append(row)
    nodes.append(make_node("Concat", row_outputs, [name], axis=2, name=name))
    return nodes


@contextmanager
def size_following_translations(full_size: tuple[int, int]) -> Iterator[None]:
    """Within the block, MXNet's exporter translates resize and adaptive pooling as described above.

    `full_size`: the (height, width) the traced graph's last resize targets (the crop size, or the fixed
    shape it was specialised to). Registered for every opset the exporter knows (12 and 13).
    """
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph

    ours = {RESIZE_OP: resize_translation(full_size), POOL_OP: adaptive_pool_translation}
    saved = {}
    for opset in EXPORTER_OPSETS:
        registry = MXNetGraph.registry_.setdefault(opset, {})
        for op, func in ours.items():
            saved[opset, op] = registry.get(op)
            registry[op] = func
    try:
        yield
    finally:
        for (opset, op), func in saved.items():
            if func is None:
                MXNetGraph.registry_[opset].pop(op, None)
            else:
                MXNetGraph.registry_[opset][op] = func
