"""A compiled network: one normalised picture in, its logits out. The one thing a backend provides.

The Predictor (gluonseg.inference.predictor) does everything else (canvases, tiles, resizing, softmax,
argmax), so every backend answers through the same geometry and post-processing:

- `MXNetNetwork` (here): the Gluon network in FP32, INT8 or BF16; native-scale shapes compiled by
  gluonseg.inference.shape_graphs.
- `OnnxRuntimeNetwork`, `OpenVinoNetwork` (gluonseg.inference.onnx_backends): the exported model.onnx.

Contract of `logits(data)`: `data` is a (3, H, W) float32 array, RGB scaled to [0, 1] and normalised
with the ImageNet mean/std, H and W multiples of 8 (or the crop size); the answer is (C, H, W) float32
logits, a new array the caller owns (and may write to). A batch (N, 3, H, W) of same-sized inputs (the
slide scale's windows) answers (N, C, H, W): the ONNX backends run it as one batch, MXNet one input at a
time (its graphs are compiled for batch 1). Safe to call from several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluonseg.inference.shape_graphs import ShapeGraphs

GRAPH_CACHE = 2  # compiled native shapes kept per network (each holds its own memory plan)

# A last step per native-scale graph: (FP32 graph, height, width) -> the graph to run (BF16 converts per shape).
ShapeConverter = Callable[[gluon.HybridBlock, int, int], gluon.HybridBlock]


class Network(Protocol):
    backend: str  # 'mxnet', 'onnxruntime' or 'openvino'
    precision: str  # what it computes in: 'fp32', 'int8' or 'bf16'

    def logits(self, data: np.ndarray) -> np.ndarray: ...


class MXNetNetwork:
    """A hybridized Gluon network: the crop-sized graph as built, other sizes through ShapeGraphs.

    A static-alloc CachedOp runs every call in the same preallocated memory, so one lock serialises the
    calls (with the look-up of the shape's graph, which may evict another's) and the copy of their output.
    """

    backend = "mxnet"

    def __init__(
        self,
        net: gluon.HybridBlock,
        crop_size: int,
        ctx: mx.Context | None = None,
        precision: str = "fp32",
        shape_converter: ShapeConverter | None = None,
    ) -> None:
        self.net = net
        self.ctx = ctx or mx.cpu()
        self.precision = precision
        self._crop = int(crop_size)
        self._shape_converter = shape_converter
        self._lock = threading.RLock()
        self.shape_graphs: ShapeGraphs | None = None  # traced on the first other-sized call
        net.hybridize(static_alloc=True, static_shape=True)

    def logits(self, data: np.ndarray) -> np.ndarray:
        if data.ndim == 4:  # the graphs are static-shaped at batch 1: one input at a time
            return np.stack([self.logits(one) for one in data])
        height, width = data.shape[1:]
        with self._lock:
            if (height, width) == (self._crop, self._crop):
                return self._run(self.net, data)
            if self.shape_graphs is None:
                self.shape_graphs = ShapeGraphs(self.net, self._crop, self.ctx, GRAPH_CACHE, self._shape_converter)
            # Getting the shape's graph and running it form one step: another thread's new shape may
            # evict (and release) this graph, which must not happen between the two.
            return self._run(self.shape_graphs.get(height, width), data)

    def _run(self, graph: gluon.HybridBlock, data: np.ndarray) -> np.ndarray:
        out: Any = graph(mx.nd.array(data[None], ctx=self.ctx, dtype=np.float32))
        if isinstance(out, list | tuple):
            out = out[0]
        if out.dtype != np.float32:  # a lower-precision graph may end in its own dtype
            out = out.astype(np.float32)
        # Copied out under the lock: the static-alloc CachedOp reuses this buffer on the next call.
        return out.asnumpy()[0]
