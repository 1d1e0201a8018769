"""The hyperparameter schema of the SageMaker Semantic Segmentation algorithm: one table, the only source.

Values arrive as strings (`hyperparameters.json` holds `{"epochs": "10"}`); framework estimators
add a layer of JSON quotes (`'"resnet-50"'`). Every rule, default and message comes from `SCHEMA`;
the README table and `gluonseg hyperparameters` (gluonseg.docs) and `gluonseg algorithm-spec` are
generated from it. An entry's `used_when` quotes the docs where they make it conditional.

Entries with `extension=True` are gluonseg's own (not in SageMaker's algorithm): parsed and worded the
same way, listed apart, and left out of the model folder's `hyperparams.json` while at their default, so
a job that does not set them is the built-in's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gluonseg.errors import ClientError
from gluonseg.hyperparameter_conditions import Condition, ignore_unused
from gluonseg.hyperparameter_extensions import EXTENSIONS
from gluonseg.hyperparameter_param import BOOL, Param
from gluonseg.hyperparameter_values import Hyperparameters

log = logging.getLogger(__name__)

SCHEMA: tuple[Param, ...] = (
    # -- network architecture
    Param(
        "backbone",
        "choice",
        "Encoder network: a dilated ResNet (GluonCV v1s), output stride 8.",
        default="resnet-50",
        choices=("resnet-50", "resnet-101"),
        group="Network architecture",
    ),
    Param(
        "use_pretrained_model",
        "bool",
        "Start the backbone from ImageNet weights (see README: pretrained weights).",
        default=True,
        choices=BOOL,
        group="Network architecture",
    ),
    Param(
        "algorithm",
        "choice",
        "Decoder: FCN, Pyramid Scene Parsing, or DeepLab V3.",
        default="fcn",
        choices=("fcn", "psp", "deeplab"),
        group="Network architecture",
    ),
    # -- data
    Param(
        "num_classes",
        "int",
        "Number of classes; pixel value 255 is 'ignore'.",
        required=True,
        low=2,
        high=254,
        group="Data",
    ),
    Param(
        "num_training_samples",
        "int",
        "Number of training images; sets iterations per epoch of the LR schedule.",
        required=True,
        low=1,
        group="Data",
    ),
    Param(
        "base_size",
        "int",
        "Training rescale: the long side becomes base_size x U(0.5, 2.0), aspect kept.",
        default=520,
        low=16,
        low_open=True,
        group="Data",
    ),
    Param(
        "crop_size",
        "int",
        "Side of the square training crop; rounded up to a multiple of 8.",
        default=240,
        low=16,
        low_open=True,
        group="Data",
    ),
    # -- training
    Param("early_stopping", "bool", "Stop when validation mIOU stops improving.", default=False, choices=BOOL),
    Param(
        "early_stopping_min_epochs",
        "int",
        "Epochs always run before early stopping may stop.",
        default=5,
        low=0,
        used_when=Condition(
            "early_stopping",
            (True,),
            source="The minimum number of epochs that must be run. Valid values: integer",
            decision="The docs give the type without a condition, so a non-integer always fails; gluonseg's own "
            "bound (>= 0) matters only to early stopping, so with early_stopping=False the value is ignored.",
            still_checked="type",
        ),
    ),
    Param(
        "early_stopping_patience",
        "int",
        "Consecutive epochs without improvement that stop training.",
        default=4,
        low=1,
        used_when=Condition(
            "early_stopping",
            (True,),
            source="The number of epochs that meet the tolerance for lower performance before the algorithm "
            "enforces an early stop. Valid values: integer",
            decision="The docs give the type without a condition, so a non-integer always fails; gluonseg's own "
            "bound (>= 1) matters only to early stopping, so with early_stopping=False the value is ignored.",
            still_checked="type",
        ),
    ),
    Param(
        "early_stopping_tolerance",
        "float",
        "An epoch counts as not improved if the relative mIOU gain is below this.",
        default=0.0,
        low=0,
        high=1,
        used_when=Condition(
            "early_stopping",
            (True,),
            source="This is used only when early_stopping = True.",
            decision="Ignored, even if invalid, when early_stopping=False.",
        ),
    ),
    Param("epochs", "int", "Passes over the training data.", default=10, low=1),
    Param(
        "gamma1",
        "float",
        "rmsprop only: decay of the moving average of squared gradients.",
        default=0.9,
        low=0,
        high=1,
        used_when=Condition(
            "optimizer",
            ("rmsprop",),
            source="The decay factor for the moving average of the squared gradient for rmsprop. "
            "Used only for rmsprop.",
            decision="Ignored, even if invalid, with another optimizer.",
        ),
    ),
    # gamma2: "The momentum factor for rmsprop. Valid values: 0 <= float <= 1". The docs state no condition,
    # so it is validated whatever the optimizer (gluonseg uses it only for rmsprop).
    Param("gamma2", "float", "rmsprop only: momentum factor (centered RMSProp).", default=0.9, low=0, high=1),
    Param("learning_rate", "float", "Initial learning rate.", default=0.001, low=0, low_open=True, high=1),
    Param(
        "lr_scheduler",
        "choice",
        "Learning-rate schedule, updated every iteration.",
        default="poly",
        choices=("step", "poly", "cosine"),
    ),
    Param(
        "lr_scheduler_factor",
        "float",
        "step only: multiplier applied at each lr_scheduler_step epoch.",
        default=0.1,
        low=0,
        high=1,
        used_when=Condition(
            "lr_scheduler",
            ("step",),
            source="If lr_scheduler is set to step, the ratio by which to reduce (multiply) the learning_rate "
            "after each of the epochs specified by the lr_scheduler_step. Otherwise, ignored.",
            decision="Ignored, even if invalid, with lr_scheduler poly or cosine.",
        ),
    ),
    Param(
        "lr_scheduler_step",
        "epochs",
        "step only (then required): epochs after which the LR is multiplied, e.g. '10, 20'.",
        used_when=Condition(
            "lr_scheduler",
            ("step",),
            source="Conditionally Required if lr_scheduler is set to step. Otherwise, ignored.",
            decision="Required and validated with lr_scheduler=step; ignored, even if invalid, otherwise.",
        ),
    ),
    Param("mini_batch_size", "int", "Training batch size (per host).", default=16, low=1),
    Param(
        "momentum",
        "float",
        "sgd (and nag) only: momentum.",
        default=0.9,
        low=0,
        low_open=True,
        high=1,
        used_when=Condition(
            "optimizer",
            ("sgd", "nag"),
            source="The momentum for the sgd optimizer. When you use other optimizers, the semantic segmentation "
            "algorithm ignores this parameter.",
            decision="Used by sgd and by nag (sgd with Nesterov momentum); ignored, even if invalid, with adam, "
            "rmsprop or adagrad.",
        ),
    ),
    Param(
        "optimizer", "choice", "MXNet optimizer.", default="sgd", choices=("sgd", "adam", "rmsprop", "adagrad", "nag")
    ),
    Param("syncbn", "bool", "Synchronised BatchNorm across the GPUs of one host.", default=False, choices=BOOL),
    Param(
        "validation_mini_batch_size",
        "int",
        "Validation batch size; 1 scores each image whole, > 1 scores centre crops of crop_size.",
        default=16,
        low=1,
    ),
    Param(
        "weight_decay",
        "float",
        "Weight decay (L2).",
        default=0.0001,
        low=0,
        low_open=True,
        high=1,
        high_open=True,
        used_when=Condition(
            "optimizer",
            ("sgd", "nag"),
            source="The weight decay coefficient for the sgd optimizer. When you use other optimizers, the "
            "algorithm ignores this parameter.",
            decision="Used by sgd and nag, as momentum; ignored, even if invalid, with adam, rmsprop or adagrad.",
        ),
    ),
    *EXTENSIONS,
)

BY_NAME: dict[str, Param] = {p.name: p for p in SCHEMA}

# SageMaker's tuner adds this one; the SDK and toolkits add sagemaker_* keys.
TOLERATED_KEYS = frozenset({"_tuning_objective_metric"})
TOLERATED_PREFIX = "sagemaker_"


def _unquote(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1].strip()
    return value


def _invalid(param: Param, raw: Any) -> str:
    return f"The value '{raw}' is not valid for the '{param.name}' hyperparameter which accepts {param.accepts()}"


def _parse_one(param: Param, raw: Any) -> Any:
    """Parse one value; raise ValueError with the user-facing message."""
    value = _unquote(raw)
    if param.kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(_invalid(param, raw))
    if param.kind == "choice":
        text = str(value)
        if text in param.choices:
            return text
        raise ValueError(_invalid(param, raw))
    if param.kind == "epochs":
        parts = [p.strip() for p in str(value).split(",")]
        try:
            epochs = [int(p) for p in parts]
        except ValueError:
            raise ValueError(_invalid(param, raw)) from None
        if not epochs or any(e < 1 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise ValueError(_invalid(param, raw))
        return tuple(epochs)
    if param.kind == "weights":
        text = str(value).strip()
        if text in param.choices:
            return text
        try:
            weights = tuple(float(p) for p in text.split(","))
        except ValueError:
            raise ValueError(_invalid(param, raw)) from None
        if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            raise ValueError(_invalid(param, raw))
        return weights
    # numbers
    if isinstance(value, bool):
        raise ValueError(_invalid(param, raw))
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(_invalid(param, raw)) from None
    if not math.isfinite(number):
        raise ValueError(_invalid(param, raw))
    if param.kind == "int":
        if not number.is_integer():
            raise ValueError(_invalid(param, raw))
        number = int(number)
    if param.low is not None and (number <= param.low if param.low_open else number < param.low):
        raise ValueError(_invalid(param, raw))
    if param.high is not None and (number >= param.high if param.high_open else number > param.high):
        raise ValueError(_invalid(param, raw))
    return number


def round_up_to_multiple_of_8(value: int) -> int:
    return (value + 7) // 8 * 8


def parse(raw: Mapping[str, Any], log_ignored: bool = True) -> Hyperparameters:
    """Validate and type the raw hyperparameters; report every problem in one ClientError.

    A value the docs say is ignored under the job's other settings (`Param.used_when`) is ignored with
    one log line (`log_ignored=False` when re-reading a saved model's file); an invalid one is replaced
    by the default.
    """
    errors: dict[str, str] = {}  # name (or a key of its own) -> message, in schema order
    unexpected = [k for k in raw if k not in BY_NAME and k not in TOLERATED_KEYS and not k.startswith(TOLERATED_PREFIX)]
    if unexpected:
        names = ", ".join(f"'{k}'" for k in unexpected)
        verb = "was" if len(unexpected) == 1 else "were"
        errors[" unexpected"] = f"Additional properties are not allowed ({names} {verb} unexpected)"

    values: dict[str, Any] = {}
    given: set[str] = set()
    for param in SCHEMA:
        if param.name in raw and _unquote(raw[param.name]) not in ("", None):
            given.add(param.name)
            try:
                values[param.name] = _parse_one(param, raw[param.name])
            except ValueError as exc:
                errors[param.name] = str(exc)
        elif param.required:
            errors[param.name] = f"The required hyperparameter '{param.name}' is missing; it accepts {param.accepts()}"
        else:
            values[param.name] = param.default

    texts = {name: str(_unquote(raw[name])) for name in given}
    ignore_unused(SCHEMA, texts, values, errors, lambda p: _type_is_right(p, raw[p.name]), log_ignored)

    if (
        values.get("lr_scheduler") == "step"
        and values.get("lr_scheduler_step") is None
        and not errors.get("lr_scheduler_step")
    ):
        errors["lr_scheduler_step"] = (
            "The 'lr_scheduler_step' hyperparameter is required when 'lr_scheduler' is 'step'; it accepts "
            + BY_NAME["lr_scheduler_step"].accepts()
        )
    weights, classes = values.get("class_weights"), values.get("num_classes")
    if isinstance(weights, tuple) and classes is not None and len(weights) != classes:
        errors["class_weights"] = (
            f"The value '{_unquote(raw['class_weights'])}' is not valid for the 'class_weights' hyperparameter: "
            f"it lists {len(weights)} weight(s) but num_classes is {classes}; it accepts "
            + BY_NAME["class_weights"].accepts()
        )
    if errors:
        raise ClientError("; ".join(errors.values()) + " (caused by ValidationError)")

    crop = values["crop_size"]
    if crop % 8:
        values["crop_size"] = round_up_to_multiple_of_8(crop)
        log.info("crop_size %d rounded up to %d (a multiple of 8)", crop, values["crop_size"])
    return Hyperparameters(values)


def _type_is_right(param: Param, raw: Any) -> bool:
    """Whether `raw` is of the parameter's type, whatever gluonseg's bounds."""
    try:
        _parse_one(replace(param, low=None, high=None), raw)
    except ValueError:
        return False
    return True


def typed_for_json(hp: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as plain JSON types (tuples become lists); extensions only where set otherwise than
    their default, so a job without them writes the built-in's keys alone."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in hp.items()
        if not (k in BY_NAME and BY_NAME[k].extension and v == BY_NAME[k].default)
    }
