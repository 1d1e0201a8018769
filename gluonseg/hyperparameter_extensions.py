"""gluonseg's own hyperparameters, not in SageMaker's algorithm: listed apart, and left out of the model folder's
hyperparams.json at their default (gluonseg.hyperparameters.typed_for_json). README: rare classes, INT8."""

from __future__ import annotations

from typing import Any

from gluonseg.hyperparameter_param import BOOL, Param

EXTENSION: dict[str, Any] = {"group": "gluonseg extensions", "extension": True}

EXTENSIONS: tuple[Param, ...] = (
    Param(
        "class_weights",
        "weights",
        "Per-class weights of the pixel loss: inverse_frequency or median_frequency from the training masks "
        "(capped at 10), or one number per class.",
        default="none",
        choices=("none", "inverse_frequency", "median_frequency"),
        **EXTENSION,
    ),
    Param(
        "loss",
        "choice",
        "Pixel loss: cross_entropy, or ohem (only pixels whose true-class probability is below 0.7, "
        "at least the hardest 1/40 of each image's).",
        default="cross_entropy",
        choices=("cross_entropy", "ohem"),
        **EXTENSION,
    ),
    Param(
        "int8_model",
        "bool",
        "After training, an INT8 model (model-int8.onnx) calibrated on the job's pictures, kept if its masks match "
        "FP32's on 99.5% of the check pixels; serving's auto takes it where faster.",
        default=True,
        choices=BOOL,
        **EXTENSION,
    ),
    Param(
        "tensorboard",
        "bool",
        "TensorBoard event files in /opt/ml/output/tensorboard (TensorBoardOutputConfig's folder): scalars each "
        "epoch, validation pictures with predicted and true masks every 5 epochs.",
        default=True,
        choices=BOOL,
        **EXTENSION,
    ),
)
