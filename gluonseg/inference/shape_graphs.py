"""The network's graph re-specialised to another input size, sharing its parameters.

GluonCV's segmentation heads bake sizes into the graph (spec gluoncv-notes §3.3): the last
`BilinearResize2D` upsamples to (crop, crop), and PSP's pyramid and DeepLab's image-pooling branch
upsample their pooled features to (crop/8, crop/8). Stock `predict()` changes those numbers on a
non-hybridized network and re-runs imperative ops per image. Here the traced graph of the
crop-sized network (FP32, INT8 or BF16 alike: the resize nodes are the same) is copied with those
attributes rewritten for an input of (H, W), a multiple of 8, and compiled once per shape as a
static-alloc `SymbolBlock` over the same parameter arrays (no second copy of the weights). Every
other op is size-agnostic, so the result is exactly what `predict()` computes on that input.

Compiled graphs are kept in a small LRU: each holds a memory plan for its shape, so the cache size
bounds a worker's memory when images of many sizes arrive. That bound only holds if an evicted graph's
memory really goes: a Gluon block sits in reference cycles, so dropping it from the LRU left its
CachedOp (and its static memory, hundreds of MB for a 1 MP canvas) alive until Python's cyclic
collector happened to run: a worker grew by ~250 MB a request on pictures of varied sizes. Eviction
therefore releases the CachedOp explicitly and collects the cycles at once.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import mxnet as mx
from mxnet import gluon

from gluonseg.inference.geometry import MULTIPLE

log = logging.getLogger(__name__)

RESIZE_OP = "_contrib_BilinearResize2D"
# MXNet's oneDNN primitive caches grow with every new shape: gluonseg/inference/__init__.py bounds them.


def traced_symbol(net: gluon.HybridBlock) -> mx.sym.Symbol:
    """The network's first output as a symbol of input `data` (the aux head, if any, is not used)."""
    out: Any = net(mx.sym.var("data"))
    return out[0] if isinstance(out, list | tuple) else out


def respecialise(symbol_json: str, crop_size: int, height: int, width: int) -> str:
    """`symbol_json` with the crop-sized resize targets rewritten for a (height, width) input.

    A graph without such a resize (a size-agnostic network) comes back unchanged. Raises ValueError for a
    resize this module does not know (another network family).
    """
    if height % MULTIPLE or width % MULTIPLE:
        raise ValueError(f"input size must be a multiple of {MULTIPLE}, got {height}x{width}")
    graph = json.loads(symbol_json)
    targets = {
        (crop_size, crop_size): (height, width),
        (crop_size // MULTIPLE, crop_size // MULTIPLE): (height // MULTIPLE, width // MULTIPLE),
    }
    for node in graph["nodes"]:
        if node.get("op") != RESIZE_OP:
            continue
        attrs = node.setdefault("attrs", {})
        if attrs.get("mode", "size") != "size":
            raise ValueError(f"resize node {node.get('name')} uses mode {attrs.get('mode')!r}")
        key = (int(attrs.get("height", -1)), int(attrs.get("width", -1)))
        if key not in targets:
            raise ValueError(f"resize node {node.get('name')} targets {key}, not a size derived from crop {crop_size}")
        attrs["height"], attrs["width"] = (str(v) for v in targets[key])
    return json.dumps(graph)


def _release(graph: gluon.HybridBlock) -> None:
    """Free a compiled graph's static memory now, not whenever the cyclic collector runs."""
    graph._clear_cached_op()  # noqa: SLF001 - Gluon's own way to drop a CachedOp and its memory plan
    del graph
    gc.collect()
    _malloc_trim()


def _malloc_trim() -> None:
    """Hand glibc's freed heap pages back to the OS (the plan's large buffers are mmap'd and go anyway)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class ShapeGraphs:
    """Compiled graphs of one network, one per input shape, least recently used dropped past `capacity`."""

    def __init__(
        self,
        net: gluon.HybridBlock,
        crop_size: int,
        ctx: mx.Context,
        capacity: int = 2,
        convert: Callable[[gluon.HybridBlock, int, int], gluon.HybridBlock] | None = None,
    ) -> None:
        """`convert(fp32_graph, height, width)`: a last step per shape (BF16 graphs are converted per shape)."""
        self._convert = convert
        self._json = traced_symbol(net).tojson()
        self._params = net.collect_params()
        self._crop = int(crop_size)
        self._ctx = ctx
        self._capacity = max(1, int(capacity))
        self._graphs: OrderedDict[tuple[int, int], gluon.SymbolBlock] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, height: int, width: int) -> gluon.SymbolBlock:
        """The graph for a (1, 3, height, width) input, compiled on first use."""
        key = (int(height), int(width))
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
                return graph
            symbol = mx.sym.load_json(respecialise(self._json, self._crop, *key))
            graph = self._block(symbol)
            if self._convert is not None:
                graph = self._convert(graph, *key)
            graph.hybridize(static_alloc=True, static_shape=True)
            self._graphs[key] = graph
            while len(self._graphs) > self._capacity:
                (old_h, old_w), old = self._graphs.popitem(last=False)
                _release(old)
                log.info("dropped the compiled graph for %dx%d inputs (cache of %d)", old_w, old_h, self._capacity)
            return graph

    def _block(self, symbol: mx.sym.Symbol) -> gluon.SymbolBlock:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SymbolBlock's "cannot decide type" notice about the input
            try:
                return gluon.SymbolBlock(symbol, mx.sym.var("data"), params=self._params)
            except AssertionError:
                pass
            # A BF16 graph: its weights are bfloat16 where its symbol says float32. Rebuild the float32
            # graph from them (exact: every bfloat16 value is a float32); `convert` makes it BF16 again.
            block = gluon.SymbolBlock(symbol, mx.sym.var("data"))
        values = {
            name: mx.nd.amp_cast(self._params[name].data(self._ctx), dtype="float32")
            for name in block.collect_params().keys()
        }
        block.collect_params().load_dict(values, ctx=self._ctx)
        return block

    def shapes(self) -> list[tuple[int, int]]:
        """(height, width) of the graphs held, least recently used first."""
        with self._lock:
            return list(self._graphs)
