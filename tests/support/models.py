"""Small model folders with random weights, written the way training writes them, and test pictures."""

from __future__ import annotations

import mxnet as mx
import numpy as np

from gluonseg.artifacts import BEST_PARAMS, write_hyperparams
from gluonseg.hyperparameters import parse
from gluonseg.models import build_network

CROP = 64
CLASSES = 4


def make_model_dir(folder, algorithm: str, meta: dict | None = None):
    """A model folder with random weights, written the way training writes one (aux head included)."""
    folder.mkdir(parents=True, exist_ok=True)
    mx.random.seed(3)
    net = build_network(
        algorithm, "resnet-50", num_classes=CLASSES, crop_size=CROP, base_size=72, pretrained_backbone=False, aux=True
    )
    net(mx.nd.zeros((1, 3, CROP, CROP)))  # fixes every deferred shape before saving
    net.save_parameters(str(folder / BEST_PARAMS))
    hp = parse(
        {
            "num_classes": str(CLASSES),
            "num_training_samples": "1",
            "crop_size": str(CROP),
            "base_size": "72",
            "algorithm": algorithm,
            "use_pretrained_model": "False",
        }
    )
    write_hyperparams(folder, hp, meta=meta or {})
    return folder


def image_of(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)
