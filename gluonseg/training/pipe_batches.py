"""Pipe mode: one RecordIO stream per epoch (`train_<epoch>`), decoded and batched in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import mxnet as mx
import numpy as np

from gluonseg.data.label_map import LabelMap
from gluonseg.data.pipe import iter_pipe_samples, wait_for_pipe

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def pipe_batches(
    path: Path,
    label_map: LabelMap,
    transform: Transform,
    batch_size: int,
    rng: np.random.Generator,
    timeout_s: float = 600,
) -> Iterator[tuple[mx.nd.NDArray, mx.nd.NDArray]]:
    """Batches of (images, masks) from one epoch's stream; the last batch may be short."""
    wait_for_pipe(path, timeout_s=timeout_s)
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for _name, image, mask in iter_pipe_samples(path, label_map):
        x, y = transform(image, mask, rng)
        images.append(x)
        masks.append(y)
        if len(images) == batch_size:
            yield mx.nd.array(np.stack(images)), mx.nd.array(np.stack(masks))
            images, masks = [], []
    if images:
        yield mx.nd.array(np.stack(images)), mx.nd.array(np.stack(masks))
