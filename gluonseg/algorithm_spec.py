"""`gluonseg algorithm-spec`: a SageMaker `CreateAlgorithm` request body, generated from the one schema.

Registered as an algorithm resource, gluonseg gets what the built-in has and a bring-your-own image
lacks: SageMaker validates hyperparameters and channels before a job starts, the console and
`sagemaker.AlgorithmEstimator` know its defaults and metrics, automatic model tuning knows its
objective metrics and tunable hyperparameters (spec §10.2, option B). Nothing here is written by
hand twice: hyperparameters come from `gluonseg.hyperparameters.SCHEMA`, metrics from
`metric_definitions.json`, content types from `gluonseg.codecs.content_types`.

Only the 24 hyperparameters of the SageMaker algorithm are published (`SAGEMAKER_HYPERPARAMETERS`);
hyperparameters gluonseg adds of its own are not part of the built-in's contract.
"""

from __future__ import annotations

from typing import Any

from gluonseg.codecs.content_types import REQUEST_TYPES, RESPONSE_TYPES
from gluonseg.hyperparameters import SCHEMA, Param
from gluonseg.training.metrics_log import load_metric_definitions

DEFAULT_NAME = "gluonseg-semantic-segmentation"

# The Amazon SageMaker Semantic Segmentation algorithm's hyperparameters (spec §3), in the schema's order.
SAGEMAKER_HYPERPARAMETERS = (
    "backbone",
    "use_pretrained_model",
    "algorithm",
    "num_classes",
    "num_training_samples",
    "base_size",
    "crop_size",
    "early_stopping",
    "early_stopping_min_epochs",
    "early_stopping_patience",
    "early_stopping_tolerance",
    "epochs",
    "gamma1",
    "gamma2",
    "learning_rate",
    "lr_scheduler",
    "lr_scheduler_factor",
    "lr_scheduler_step",
    "mini_batch_size",
    "momentum",
    "optimizer",
    "syncbn",
    "validation_mini_batch_size",
    "weight_decay",
)

# "Tuning a Semantic Segmentation Model" (AWS docs) lists these as the tunable ones (spec §10.1).
TUNABLE = ("learning_rate", "mini_batch_size", "momentum", "optimizer", "weight_decay")

OBJECTIVE_METRICS = ("validation:mIOU", "validation:pixel_accuracy")  # both Maximize

# The training image runs MXNet built for CUDA 11.2 (Dockerfile.train): NVIDIA GPUs up to Ampere, as
# the built-in ("GPU instances only" for training). Several instances: multi-host training works.
TRAINING_INSTANCE_TYPES = (
    *(f"ml.p3.{size}" for size in ("2xlarge", "8xlarge", "16xlarge")),
    "ml.p3dn.24xlarge",
    "ml.p4d.24xlarge",
    *(f"ml.g4dn.{size}" for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")),
    *(f"ml.g5.{size}" for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")),
    "ml.g5.24xlarge",
    "ml.g5.48xlarge",
)
# The serving image is CPU-only (Dockerfile.serve).
INFERENCE_INSTANCE_TYPES = (
    *(f"ml.c5.{size}" for size in ("xlarge", "2xlarge", "4xlarge", "9xlarge", "18xlarge")),
    *(f"ml.m5.{size}" for size in ("large", "xlarge", "2xlarge", "4xlarge", "12xlarge", "24xlarge")),
)
REALTIME_INSTANCE_TYPES = ("ml.c5.large", *INFERENCE_INSTANCE_TYPES)

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
MANIFEST = "application/x-recordio"  # Pipe mode: an augmented manifest (spec §5)
# name -> (required, content types, input modes, description). The annotation channels are required
# in File mode only (Pipe mode reads masks from the augmented manifest), so SageMaker must not insist
# on them; the container does, with a ClientError naming what is missing.
CHANNELS: dict[str, tuple[bool, tuple[str, ...], tuple[str, ...], str]] = {
    "train": (True, (*IMAGE_TYPES, MANIFEST), ("File", "Pipe"), "Training images; Pipe: an augmented manifest."),
    "validation": (True, (*IMAGE_TYPES, MANIFEST), ("File", "Pipe"), "Validation images; Pipe: a manifest."),
    "train_annotation": (False, ("image/png",), ("File",), "File mode (then required): PNG masks of class ids."),
    "validation_annotation": (False, ("image/png",), ("File",), "File mode (then required): validation masks."),
    "label_map": (False, ("application/json",), ("File",), "Optional: train_label_map.json, validation_..."),
    "model": (False, ("application/x-sagemaker-model",), ("File",), "Optional: a model.tar.gz to train on from."),
}

_TYPES = {"int": "Integer", "float": "Continuous", "choice": "Categorical", "bool": "Categorical"}


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _default(param: Param) -> str | None:
    if param.required or param.default is None:
        return None
    if param.kind == "float":
        return repr(float(param.default))  # 0.0001, 0.9, 0.0
    return str(param.default)  # True/False as the docs write them, integers, choices


def hyperparameter_specification(param: Param) -> dict[str, Any]:
    """One `HyperParameterSpecification`: the schema's type, range, default and wording.

    A numeric range needs both ends; a parameter bounded on one side only (e.g. a positive integer)
    gets no Range, and the container checks it. Open bounds (learning_rate > 0) are given as the
    bound itself: the description and the container's check say it is excluded.
    """
    spec: dict[str, Any] = {
        "Name": param.name,
        "Description": f"{param.meaning()} Accepts {param.accepts()}."[:1024],
        "Type": _TYPES.get(param.kind, "FreeText"),
        "IsTunable": param.name in TUNABLE,
        "IsRequired": param.required,
    }
    if param.kind in ("choice", "bool"):
        spec["Range"] = {"CategoricalParameterRangeSpecification": {"Values": list(param.choices)}}
    elif param.kind in ("int", "float") and param.low is not None and param.high is not None:
        key = "IntegerParameterRangeSpecification" if param.kind == "int" else "ContinuousParameterRangeSpecification"
        spec["Range"] = {key: {"MinValue": _number(param.low), "MaxValue": _number(param.high)}}
    default = _default(param)
    if default is not None:
        spec["DefaultValue"] = default
    return spec


def sagemaker_params() -> list[Param]:
    """The schema's entries for the built-in's hyperparameters (gluonseg's own additions left out)."""
    return [p for p in SCHEMA if p.name in SAGEMAKER_HYPERPARAMETERS]


def algorithm_spec(training_image: str, inference_image: str, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The body of `aws sagemaker create-algorithm --cli-input-json file://spec.json`."""
    channels = [
        {
            "Name": channel,
            "Description": description,
            "IsRequired": required,
            "SupportedContentTypes": list(types),
            "SupportedCompressionTypes": ["None"],
            "SupportedInputModes": list(modes),
        }
        for channel, (required, types, modes, description) in CHANNELS.items()
    ]
    return {
        "AlgorithmName": name,
        "AlgorithmDescription": "gluonseg: the Amazon SageMaker Semantic Segmentation algorithm (FCN, PSP, "
        "DeepLab V3 on ResNet-50/101), reimplemented on MXNet + GluonCV with the same hyperparameters, "
        "channels, metrics and inference API.",
        "TrainingSpecification": {
            "TrainingImage": training_image,
            "SupportedHyperParameters": [hyperparameter_specification(p) for p in sagemaker_params()],
            "SupportedTrainingInstanceTypes": list(TRAINING_INSTANCE_TYPES),
            "SupportsDistributedTraining": True,
            "MetricDefinitions": load_metric_definitions(),
            "TrainingChannels": channels,
            "SupportedTuningJobObjectiveMetrics": [
                {"Type": "Maximize", "MetricName": metric} for metric in OBJECTIVE_METRICS
            ],
        },
        "InferenceSpecification": {
            "Containers": [{"Image": inference_image}],
            "SupportedTransformInstanceTypes": list(INFERENCE_INSTANCE_TYPES),
            "SupportedRealtimeInferenceInstanceTypes": list(REALTIME_INSTANCE_TYPES),
            "SupportedContentTypes": list(REQUEST_TYPES),
            "SupportedResponseMIMETypes": list(RESPONSE_TYPES),
        },
    }
