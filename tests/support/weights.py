"""Stand-in "ImageNet" backbone weights: random arrays in GluonCV's layout, since the real ones cannot be fetched."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_backbone_weights(path: Path, name: str = "resnet50_v1s", seed: int = 42) -> dict[str, np.ndarray]:
    """Write `name`'s parameters with random values (BN variances positive) to `path`; return the arrays."""
    import mxnet as mx
    from gluoncv.model_zoo import get_model

    net = get_model(name, pretrained=False, dilated=True)
    net.infer_shape(mx.nd.zeros((1, 3, 32, 32)))  # fixes shapes without running the network
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, param in net._collect_params_with_prefix().items():
        values = rng.standard_normal(param.shape, dtype=np.float32) * 0.05
        if key.endswith("running_var"):
            values = np.abs(values) + 0.5
        arrays[key] = values
    mx.nd.save(str(path), {key: mx.nd.array(values) for key, values in arrays.items()})
    return arrays
