"""The backends and precisions a network can run on, and what serving runs when nothing is asked.

numpy-free and MXNet-free: the gunicorn master checks GLUONSEG_BACKEND / GLUONSEG_PRECISION with these
before any worker imports MXNet.
"""

from __future__ import annotations

import os

from gluonseg.errors import ClientError

BACKENDS = ("mxnet", "onnxruntime", "openvino", "auto")
PRECISIONS = ("fp32", "int8", "bf16")
# Serving (endpoints, batch transform, `gluonseg serve` and `transform`) runs `auto` unless told otherwise:
# in the backends benchmark its choice agreed with MXNet FP32 on >= 99.89% of validation pixels for FCN,
# PSP and DeepLabV3 (the bar: 99.5%) at 4.7-7x the requests/s (BENCHMARKS.md "backends").
SERVING_DEFAULT = "auto"
REFERENCE = ("mxnet", "fp32")
# auto's measuring, the export included, stops after this many seconds, so that with the reference's
# load before it and the other workers' after it a worker answers /ping inside SageMaker's 4 minutes.
MEASURE_BUDGET_S = 120.0
# auto times each candidate on a picture this many pixels a side (GLUONSEG_AUTO_TIMING_SIDE), whatever the crop
# size: relative speeds at a small crop did not hold at the sizes served (`make demo`, crop 96, picked MXNet
# BF16 at 96x96, which was no faster than FP32 on 480x480 pictures).
TIMING_SIDE = 480


def check_backend(value: str, name: str = "backend") -> str:
    """One of BACKENDS (case and spaces ignored), else a ClientError naming `name`."""
    backend = str(value).strip().lower()
    if backend not in BACKENDS:
        raise ClientError(f"{name} must be one of {', '.join(BACKENDS)}, got {value!r}")
    return backend


def check_precision(value: str, name: str = "precision") -> str:
    """One of PRECISIONS (case and spaces ignored), else a ClientError naming `name`."""
    precision = str(value).strip().lower()
    if precision not in PRECISIONS:
        raise ClientError(f"{name} must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return precision


def serving_choice(backend: str | None, precision: str | None) -> tuple[str, str, str]:
    """(backend, precision, why) for a server or batch transform from what the operator set (None: not set).

    Nothing set: `auto`. A precision without a backend keeps MXNet at that precision, which is what
    GLUONSEG_PRECISION / --precision meant before `auto` became the default (auto would choose its own
    precision and silently drop the one asked for).
    """
    if backend is not None:
        return check_backend(backend), check_precision(precision or "fp32"), "as asked"
    if precision is not None:
        return "mxnet", check_precision(precision), "a precision was asked without a backend: MXNet runs it"
    return SERVING_DEFAULT, "fp32", "the serving default"


def measure_budget(value: str | None = None) -> float:
    """auto's measuring budget in seconds: `value`, else GLUONSEG_AUTO_BUDGET_S, else MEASURE_BUDGET_S."""
    value = value if value is not None else os.environ.get("GLUONSEG_AUTO_BUDGET_S")
    if value is None or not value.strip():
        return MEASURE_BUDGET_S
    try:
        budget = float(value)
    except ValueError:
        raise ClientError(f"GLUONSEG_AUTO_BUDGET_S must be a number of seconds, got {value!r}") from None
    if not budget >= 0:  # NaN too
        raise ClientError(f"GLUONSEG_AUTO_BUDGET_S must be at least 0, got {value!r}")
    return budget


def timing_side(value: str | None = None) -> int:
    """auto's timing picture side: `value`, else GLUONSEG_AUTO_TIMING_SIDE, else TIMING_SIDE; a multiple of 8."""
    value = value if value is not None else os.environ.get("GLUONSEG_AUTO_TIMING_SIDE")
    if value is None or not value.strip():
        return TIMING_SIDE
    try:
        side = int(value)
    except ValueError:
        raise ClientError(f"GLUONSEG_AUTO_TIMING_SIDE must be a whole number of pixels, got {value!r}") from None
    if side < 64 or side > 2048 or side % 8:
        raise ClientError(f"GLUONSEG_AUTO_TIMING_SIDE must be a multiple of 8 from 64 to 2048, got {value!r}")
    return side
