"""A model folder with random weights, written the way training writes one (a forward pass costs the same,
and holds the same memory, whatever the weights' values)."""

from __future__ import annotations

import shutil
from pathlib import Path

# What a trained folder holds that serving does not read, or that a benchmark must make again itself: the
# training checkpoints and output, and the files `auto` and the export write beside the model.
NOT_SERVED = ("checkpoints", "output", "model.onnx", "model.json", "backend-choice.json")


def random_model(
    folder: Path, algorithm: str = "fcn", classes: int = 4, crop: int = 64, backbone: str = "resnet-50"
) -> Path:
    """`algorithm` on `backbone` with its aux head, `classes` classes, crop_size = base_size = `crop`."""
    import mxnet as mx

    from gluonseg.artifacts import BEST_PARAMS, write_hyperparams
    from gluonseg.hyperparameters import parse
    from gluonseg.models import build_network

    folder.mkdir(parents=True, exist_ok=True)
    mx.random.seed(0)
    net = build_network(
        algorithm, backbone, num_classes=classes, crop_size=crop, base_size=crop, pretrained_backbone=False, aux=True
    )
    net(mx.nd.zeros((1, 3, crop, crop)))  # fixes every deferred shape before saving
    net.save_parameters(str(folder / BEST_PARAMS))
    hp = parse(
        {
            "num_classes": str(classes),
            "num_training_samples": "1",
            "crop_size": str(crop),
            "base_size": str(crop),
            "algorithm": algorithm,
            "backbone": backbone,
            "use_pretrained_model": "False",
        }
    )
    write_hyperparams(folder, hp, meta={})
    return folder


def copy_for_serving(trained: Path, copy: Path) -> Path:
    """A fresh copy of a trained model folder without NOT_SERVED, so that `auto` and the export run again on it."""
    shutil.rmtree(copy, ignore_errors=True)
    return Path(shutil.copytree(trained, copy, ignore=shutil.ignore_patterns(*NOT_SERVED)))
