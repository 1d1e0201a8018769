"""Whole-image prediction with a trained network: the one code path behind the server, batch transform and CLI.

Modules, each importing only those listed after it:
- `loading`: a Predictor from a model folder (reads the files, picks the precision's network).
- `precision`: INT8 (calibrated, or exported by `gluonseg quantize`) and BF16 networks; the FP32 fallback.
- `predictor`: the Predictor: a network in memory, images in, masks and probabilities out (no file I/O).
- `shape_graphs`: the network's graph re-specialised to each native-scale input size.
- `postprocess`: banded resize, softmax and argmax of logits into the answer.
- `geometry`: the sizes, canvases and tiles the network sees for an image.
- `choices`: the backend and precision names, and what serving runs when nothing is asked (auto).

`geometry` and `postprocess` need only numpy and PIL, `choices` nothing; the others import MXNet.
"""

from __future__ import annotations

import os

# MXNet keeps oneDNN primitives per op signature (input shapes included) in caches that are unbounded
# by default: one more set for every new picture shape, for the life of the worker. This bounds each
# while holding the distinct convolutions of the two graphs kept (28 each for FCN-ResNet-50), so a
# forward pass does not rebuild its own primitives. MXNet reads the variable once, at the first
# oneDNN operator of the process: it is set when this package (any of its modules) is imported,
# before any forward pass. An operator's own setting is kept.
MKLDNN_CACHE_ENTRIES = 64
os.environ.setdefault("MXNET_MKLDNN_CACHE_NUM", str(MKLDNN_CACHE_ENTRIES))
