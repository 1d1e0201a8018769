"""Scoring the validation set: centre crops in batches, or whole images one at a time.

Whole images (validation_mini_batch_size=1) go through GluonCV's `predict`, which resizes the
network's fixed output/pooling sizes to the input. Two details make that safe inside training:
the input is padded right/bottom to a multiple of 8 (PSP's pyramid and DeepLab's ASPP pool at
1/8 scale) and the prediction cropped back; and every `_up_kwargs` that `predict` rewrites is
restored afterwards, else the next training step would run at the last image's size.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Iterable
from contextlib import contextmanager

import mxnet as mx
import numpy as np
from mxnet import gluon

from gluonseg.metrics import ConfusionMatrix


@contextmanager
def preserved_output_sizes(net: gluon.Block):
    saved = []

    def walk(block):
        if hasattr(block, "_up_kwargs"):
            saved.append((block, copy.deepcopy(block._up_kwargs)))
        for child in block._children.values():
            walk(child() if isinstance(child, weakref.ref) else child)

    walk(net)
    try:
        yield
    finally:
        for block, kwargs in saved:
            block._up_kwargs = kwargs


def whole_image_logits(net: gluon.Block, image: mx.nd.NDArray) -> mx.nd.NDArray:
    """Logits (1, C, H, W) for one normalised image (1, 3, H, W) of any size."""
    _, _, h, w = image.shape
    ph, pw = -h % 8, -w % 8
    if ph or pw:
        image = mx.nd.pad(image, mode="constant", constant_value=0, pad_width=(0, 0, 0, 0, 0, ph, 0, pw))
    with preserved_output_sizes(net):
        logits = net.predict(image)
    return logits[:, :, :h, :w]


def main_output(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def evaluate(
    net: gluon.Block, batches: Iterable, ctxs: list[mx.Context], num_classes: int, whole_images: bool
) -> tuple[ConfusionMatrix, float, int]:
    """Confusion matrix over `batches` of (image, mask); returns it, seconds spent and images seen."""
    cm = ConfusionMatrix(num_classes)
    start = time.perf_counter()
    images = 0
    for data, label in batches:
        if whole_images:
            for i in range(data.shape[0]):
                logits = whole_image_logits(net, data[i : i + 1].as_in_context(ctxs[0]))
                cm.update(logits.argmax(axis=1).asnumpy().astype(np.int64), label[i : i + 1].asnumpy())
        else:
            parts = gluon.utils.split_and_load(data, ctxs, even_split=False)
            labels = gluon.utils.split_and_load(label, ctxs, even_split=False)
            for x, y in zip(parts, labels):
                pred = main_output(net(x)).argmax(axis=1)
                cm.update(pred.asnumpy().astype(np.int64), y.asnumpy())
        images += data.shape[0]
    return cm, time.perf_counter() - start, images
